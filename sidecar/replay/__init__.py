"""Replay: re-send recorded requests to a candidate, recorded as role ``replay`` pairs."""

from sidecar.replay.cli import add_replay_parser, run_replay
from sidecar.replay.runner import (
    ReplayOptions,
    ReplayResult,
    default_out,
    new_run_id,
    replay,
)
from sidecar.replay.source import ReplayInputError, ReplaySource
from sidecar.replay.store import ReplayStore

__all__ = [
    "ReplayInputError",
    "ReplayOptions",
    "ReplayResult",
    "ReplaySource",
    "ReplayStore",
    "add_replay_parser",
    "default_out",
    "new_run_id",
    "replay",
    "run_replay",
]

"""Replay: re-send recorded requests to a candidate, recorded as role ``replay`` pairs.

Names are imported on first use, so building the ``sidecar`` command line stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sidecar._lazy import lazy_exports

if TYPE_CHECKING:
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

__getattr__, __dir__ = lazy_exports(
    __name__,
    globals(),
    {
        **dict.fromkeys(("add_replay_parser", "run_replay"), "sidecar.replay.cli"),
        **dict.fromkeys(
            ("ReplayOptions", "ReplayResult", "default_out", "new_run_id", "replay"),
            "sidecar.replay.runner",
        ),
        **dict.fromkeys(("ReplayInputError", "ReplaySource"), "sidecar.replay.source"),
        "ReplayStore": "sidecar.replay.store",
    },
)

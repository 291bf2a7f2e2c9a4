"""Gold sets: reviewed cases a model must keep answering right, captured from traffic.

Names are imported on first use, so building the ``sidecar`` command line stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sidecar._lazy import lazy_exports

if TYPE_CHECKING:
    from sidecar.gold.capture import CaptureResult, allocate, capture
    from sidecar.gold.cases import (
        CaseResult,
        Expected,
        GoldCase,
        GoldFileError,
        judge,
        load_cases,
        oip_request,
    )
    from sidecar.gold.cli import add_gold_parser, run_gold
    from sidecar.gold.runner import GoldRun, print_results, record_run, run_cases

__all__ = [
    "CaptureResult",
    "CaseResult",
    "Expected",
    "GoldCase",
    "GoldFileError",
    "GoldRun",
    "add_gold_parser",
    "allocate",
    "capture",
    "judge",
    "load_cases",
    "oip_request",
    "print_results",
    "record_run",
    "run_cases",
    "run_gold",
]

__getattr__, __dir__ = lazy_exports(
    __name__,
    globals(),
    {
        **dict.fromkeys(("CaptureResult", "allocate", "capture"), "sidecar.gold.capture"),
        **dict.fromkeys(
            ("CaseResult", "Expected", "GoldCase", "GoldFileError", "judge", "load_cases",
             "oip_request"),
            "sidecar.gold.cases",
        ),
        **dict.fromkeys(("add_gold_parser", "run_gold"), "sidecar.gold.cli"),
        **dict.fromkeys(
            ("GoldRun", "print_results", "record_run", "run_cases"), "sidecar.gold.runner"
        ),
    },
)

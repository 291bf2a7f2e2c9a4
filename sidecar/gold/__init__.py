"""Gold sets: reviewed cases a model must keep answering right, captured from traffic."""

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

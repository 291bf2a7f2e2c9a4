"""Canary rollouts: unit-hash traffic share, guardrails on live data, promote or roll back."""

from sidecar.canary.controller import CanaryController, CanaryState, evidence_from
from sidecar.canary.guardrails import Evaluation, Evidence, gather_evidence, judge

__all__ = [
    "CanaryController",
    "CanaryState",
    "Evaluation",
    "Evidence",
    "evidence_from",
    "gather_evidence",
    "judge",
]

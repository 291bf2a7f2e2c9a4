"""Canary rollouts: unit-hash traffic share, guardrails on live data, promote or roll back."""

from sidecar.canary.controller import CanaryController, CanaryState, evidence_from
from sidecar.canary.guardrails import Evaluation, Evidence, gather_evidence, judge
from sidecar.canary.supervisor import CanarySupervisor, canary_key, carry_over

__all__ = [
    "CanaryController",
    "CanaryState",
    "CanarySupervisor",
    "Evaluation",
    "Evidence",
    "canary_key",
    "carry_over",
    "evidence_from",
    "gather_evidence",
    "judge",
]

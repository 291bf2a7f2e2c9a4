"""Retraining triggers: conditions on recorded data that say a model should be retrained.

:class:`TriggerConfig` items (age, drift, quality, divergence) are evaluated by
:func:`evaluate_triggers` into :class:`TriggerResult` values, whose ``as_event()`` a webhook
notifier sends.
"""

from __future__ import annotations

from sidecar.triggers.config import (
    AgeTrigger,
    DivergenceTrigger,
    DriftTrigger,
    QualityBound,
    QualityTrigger,
    TriggerConfig,
    TriggerKind,
    cross_check_triggers,
)
from sidecar.triggers.evaluate import TriggerResult, check_lines, evaluate_triggers

__all__ = [
    "AgeTrigger",
    "DivergenceTrigger",
    "DriftTrigger",
    "QualityBound",
    "QualityTrigger",
    "TriggerConfig",
    "TriggerKind",
    "TriggerResult",
    "check_lines",
    "cross_check_triggers",
    "evaluate_triggers",
]

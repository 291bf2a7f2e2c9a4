"""Configuration of retraining triggers: the ``triggers:`` list of the YAML file.

Each item names a condition that says a model should be retrained: it is old, its inputs
drifted, its quality on outcomes fell, or a shadow disagrees with it too much.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Annotated, Literal, Self, TypeAlias

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = [
    "AgeTrigger",
    "DivergenceTrigger",
    "DriftTrigger",
    "QualityBound",
    "QualityTrigger",
    "TriggerConfig",
    "TriggerKind",
    "cross_check_triggers",
]

TriggerKind: TypeAlias = Literal["age", "drift", "quality", "divergence"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Trigger(_Model):
    name: str = Field(min_length=1, max_length=128, description="unique trigger name")
    description: str = Field("", description="why this trigger exists, for the notification")


class AgeTrigger(_Trigger):
    """Fires when a backend's model was trained more than ``max_age_days`` ago."""

    kind: Literal["age"] = Field(description="age of the model (provenance.trained_at)")
    backend: str = Field(description="backend whose provenance is read")
    max_age_days: float = Field(gt=0, description="oldest acceptable model, in days")


class DriftTrigger(_Trigger):
    """Fires when a feature of a route's requests drifted between two windows."""

    kind: Literal["drift"] = Field(description="input drift of recorded requests")
    route: str = Field(description="route match pattern whose requests are compared")
    features: tuple[str, ...] = Field(
        (), description="features as the drift report names them (tensor or tensor[i]); "
                        "empty: every feature"
    )
    psi_max: float | None = Field(None, gt=0, description="fire when a PSI exceeds this")
    ks_p_min: float | None = Field(
        None, gt=0, lt=1, description="fire when a KS p-value falls below this"
    )
    window_h: float = Field(24, gt=0, le=24 * 366, description="current window, hours to now")
    reference_h: float | None = Field(
        None, gt=0, le=24 * 366,
        description="reference window, hours just before the current one (default: window_h)",
    )

    @model_validator(mode="after")
    def _has_bound(self) -> Self:
        if self.psi_max is None and self.ks_p_min is None:
            raise ValueError("give psi_max or ks_p_min (or both)")
        return self


class QualityBound(_Model):
    """Exactly one bound on a quality figure."""

    auc_min: float | None = Field(None, ge=0, le=1, description="fire when AUC falls below")
    brier_max: float | None = Field(None, ge=0, le=1, description="fire when Brier exceeds")
    mae_max: float | None = Field(None, ge=0, description="fire when MAE exceeds")

    @model_validator(mode="after")
    def _exactly_one(self) -> Self:
        given = [v for v in (self.auc_min, self.brier_max, self.mae_max) if v is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of auc_min, brier_max or mae_max")
        return self

    @property
    def figure(self) -> Literal["auc", "brier", "mae"]:
        """The quality figure this bound is on."""
        if self.auc_min is not None:
            return "auc"
        return "brier" if self.brier_max is not None else "mae"


class QualityTrigger(_Trigger):
    """Fires when a backend's quality on recorded outcomes crosses its bound."""

    kind: Literal["quality"] = Field(description="model quality on outcomes")
    metric: str = Field("label", description="outcome metric holding labels or values")
    model: str = Field(description="backend whose calls are scored")
    route: str | None = Field(None, description="only this route (default: every route)")
    bound: QualityBound = Field(description="the bound that fires the trigger")
    window_h: float = Field(24, gt=0, le=24 * 366, description="calls of the last hours")
    min_n: int = Field(30, ge=2, description="labelled requests needed before it may fire")


class DivergenceTrigger(_Trigger):
    """Fires when a shadow diverges from its route's primary beyond a bound."""

    kind: Literal["divergence"] = Field(description="shadow vs primary divergence")
    route: str = Field(description="route match pattern")
    shadow: str = Field(description="shadow backend compared with the primary")
    max_disagreement: float | None = Field(
        None, ge=0, le=1, description="fire when the share of differing labels exceeds this"
    )
    max_mean_abs_diff: float | None = Field(
        None, ge=0, description="fire when the mean |shadow - primary| score exceeds this"
    )
    window_h: float = Field(24, gt=0, le=24 * 366, description="pairs of the last hours")
    min_n: int = Field(30, ge=1, description="pairs needed before it may fire")

    @model_validator(mode="after")
    def _has_bound(self) -> Self:
        if self.max_disagreement is None and self.max_mean_abs_diff is None:
            raise ValueError("give max_disagreement or max_mean_abs_diff (or both)")
        return self


#: One item of the ``triggers:`` list, told apart by ``kind``.
TriggerConfig: TypeAlias = Annotated[
    AgeTrigger | DriftTrigger | QualityTrigger | DivergenceTrigger,
    Field(discriminator="kind"),
]


def cross_check_triggers(
    triggers: Sequence[TriggerConfig], backends: Collection[str], routes: Collection[str]
) -> list[tuple[str, str]]:
    """Problems no single item can see: duplicate names, unknown backends or routes.

    Returns ``(path, message)`` pairs for :class:`sidecar.errors.ConfigError`.
    """
    problems: list[tuple[str, str]] = []
    seen: set[str] = set()
    for i, trigger in enumerate(triggers):
        if trigger.name in seen:
            problems.append((f"triggers[{i}].name", f"duplicate trigger name {trigger.name!r}"))
        seen.add(trigger.name)
        named: list[tuple[str, str, Collection[str]]] = []
        if isinstance(trigger, AgeTrigger):
            named.append(("backend", trigger.backend, backends))
        elif isinstance(trigger, QualityTrigger):
            named.append(("model", trigger.model, backends))
        elif isinstance(trigger, DivergenceTrigger):
            named += [("route", trigger.route, routes), ("shadow", trigger.shadow, backends)]
        else:
            named.append(("route", trigger.route, routes))
        for key, value, known in named:
            if value not in known:
                listing = ", ".join(sorted(known))
                problems.append((f"triggers[{i}].{key}", f"unknown {key} {value!r} "
                                                         f"(known: {listing})"))
    return problems

"""Configuration of units, A/B experiments and canaries (part of the YAML contract).

Weights are percent of a route's units (their sum at most 100): a variant owns the bucket
range ``[sum of earlier weights, + weight * coverage)``, so lowering coverage or appending a
variant never moves a unit between variants already there.
"""

from __future__ import annotations

import re
from itertools import pairwise
from typing import Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = [
    "AssignmentConfig",
    "CanaryConfig",
    "ExperimentConfig",
    "GuardrailsConfig",
    "NamespaceConfig",
    "UnitSource",
    "VariantConfig",
]

_FIELD = re.compile(r"(parameters|inputs)\.[A-Za-z0-9_.-]{1,128}\Z")
_HEADER = re.compile(r"[a-z0-9][a-z0-9._-]{0,127}\Z")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class UnitSource(_Model):
    """Where a unit key comes from: exactly one of the three."""

    metadata: str | None = Field(None, description="request metadata key, e.g. x-user-id")
    field: str | None = Field(
        None, description="OIP request field: parameters.NAME or inputs.NAME (a BYTES input)"
    )
    request_id: bool = Field(False, description="the request id (a per-request unit)")

    @model_validator(mode="after")
    def _exactly_one(self) -> Self:
        chosen = [self.metadata is not None, self.field is not None, self.request_id]
        if sum(chosen) != 1:
            raise ValueError("give exactly one of metadata, field or request_id: true")
        if self.metadata is not None and not _HEADER.match(self.metadata):
            raise ValueError("metadata: must be a lower-case gRPC metadata key")
        if self.field is not None and not _FIELD.match(self.field):
            raise ValueError("field: must be parameters.NAME or inputs.NAME")
        return self


class VariantConfig(_Model):
    name: str = Field(min_length=1, max_length=64, description="variant name (control, treat…)")
    backend: str = Field(description="backend that serves this variant's units")
    weight: float = Field(ge=0, le=100, description="percent of the route's units")


class NamespaceConfig(_Model):
    name: str = Field(min_length=1, max_length=64, description="layer; its name salts the hash")
    start: float = Field(0, ge=0, le=100, description="first percent of the layer owned")
    end: float = Field(100, ge=0, le=100, description="end percent of the layer owned")

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.end <= self.start:
            raise ValueError("end must be greater than start")
        return self


class ExperimentConfig(_Model):
    name: str = Field(min_length=1, max_length=64, description="experiment name")
    salt: str | None = Field(None, description="hash salt (default: the name)")
    unit: UnitSource | tuple[UnitSource, ...] | None = Field(
        None, description="unit key, or an ordered fallback list (default: the route's)"
    )
    variants: tuple[VariantConfig, ...] = Field(min_length=1, description="arms, in bucket order")
    coverage: float = Field(100, ge=0, le=100, description="percent of each range in use")
    namespace: NamespaceConfig | None = Field(None, description="layer for mutual exclusion")
    allow_force: bool = Field(False, description="honour a forced variant header (QA)")
    force_header: str = Field("x-force-variant", description="metadata key naming the variant")

    @field_validator("variants")
    @classmethod
    def _weights(cls, value: tuple[VariantConfig, ...]) -> tuple[VariantConfig, ...]:
        total = sum(v.weight for v in value)
        if total > 100 + 1e-9:
            raise ValueError(f"weights are percent of units and sum to {total:g} > 100")
        names = [v.name for v in value]
        if len(set(names)) != len(names):
            raise ValueError("variant names must be unique")
        return value

    @property
    def hash_salt(self) -> str:
        return self.salt or self.name


class GuardrailsConfig(_Model):
    alpha: float = Field(0.05, gt=0, lt=0.5, description="error level of the sequential tests")
    error_rate_margin: float = Field(
        0.02, ge=0, le=1, description="non-inferiority margin: candidate - stable error rate"
    )
    max_latency_p99_ratio: float = Field(
        1.5, gt=0, description="candidate p99 / stable p99 above this rolls back"
    )
    max_disagreement: float | None = Field(
        0.2, ge=0, le=1, description="share of mirrored pairs whose class differs; null: off"
    )
    max_mean_abs_diff: float | None = Field(
        None, ge=0, description="mean |candidate - stable| score on mirrored pairs; null: off"
    )
    srm_p_value: float = Field(0.001, gt=0, lt=1, description="SRM alarm threshold")
    min_latency_samples: int = Field(
        500, ge=1, description="successful calls per side before the p99 ratio counts"
    )


class CanaryConfig(_Model):
    stable: str = Field(description="backend serving outside the canary (the route's primary)")
    candidate: str = Field(description="backend under test")
    steps: tuple[float, ...] = Field(min_length=1, description="percent of units per step")
    step_min_duration_s: float = Field(60, ge=0, description="time spent at a step at least")
    step_min_requests: int = Field(200, ge=0, description="candidate requests per step at least")
    evaluation_interval_s: float = Field(10, gt=0, description="time between evaluations")
    salt: str | None = Field(None, description="hash salt (default: canary:ROUTE)")
    unit: UnitSource | tuple[UnitSource, ...] | None = Field(
        None, description="unit key (default: the route's, else the request id)"
    )
    mirror_stable: bool = Field(True, description="mirror stable traffic to the candidate")
    mirror_max_in_flight: int = Field(64, ge=1, description="cap on the candidate's mirror")
    mirror_timeout_ms: int = Field(1000, gt=0, description="deadline of the candidate's mirror")
    guardrails: GuardrailsConfig = Field(default_factory=GuardrailsConfig, description="checks")
    approval_before: tuple[float, ...] = Field(
        (), description="steps (percent) a human must approve before the canary enters them"
    )
    approve_promotion: bool = Field(
        False, description="a human must approve the final promotion to primary"
    )

    @model_validator(mode="after")
    def _gates(self) -> Self:
        unknown = [g for g in self.approval_before if g not in self.steps]
        if unknown:
            raise ValueError(f"approval_before names steps that do not exist: {unknown}")
        if self.steps[0] in self.approval_before:  # a start or restart enters it at once
            raise ValueError("approval_before cannot name the first step: the canary enters "
                             "it when configured or restarted (approving the config is that "
                             "review)")
        return self

    @field_validator("steps")
    @classmethod
    def _steps(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if any(not 0 < s <= 100 for s in value):
            raise ValueError("each step must be in (0, 100]")
        if any(b <= a for a, b in pairwise(value)):
            raise ValueError("steps must increase")
        return value


class AssignmentConfig(_Model):
    holdout_percent: float = Field(0, ge=0, le=100, description="units kept out of every test")
    holdout_salt: str = Field("shadowcar-holdout", description="salt of the holdout hash")

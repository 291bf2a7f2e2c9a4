"""The data contract of one route: a versioned YAML file declaring its input and output tensors.

Loaded once at startup; :func:`load_contract` names the failing field path like the config.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Self

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from sidecar.codecs.tensor import Datatype
from sidecar.errors import ConfigError

__all__ = [
    "Contract",
    "FeatureSpec",
    "InputSpec",
    "OutputSpec",
    "Scalar",
    "load_contract",
    "parse_contract",
]

#: A default element: a number for numeric tensors, a string for BYTES.
Scalar = float | str


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_range(value: tuple[float, float] | None) -> None:
    if value is not None and value[0] > value[1]:
        raise ValueError(f"range: low {value[0]:g} is above high {value[1]:g}")


class FeatureSpec(_Model):
    """One feature: a position along the last axis of an input tensor."""

    index: int | None = Field(
        None, ge=0, description="position along the last axis (default: place in the list)"
    )
    name: str | None = Field(None, min_length=1, description="human name of the feature")
    description: str = Field("", description="what the feature means")
    unit: str | None = Field(None, description="unit of measure, e.g. EUR or seconds")
    range: tuple[float, float] | None = Field(None, description="valid [low, high], inclusive")
    categories: tuple[Scalar, ...] | None = Field(None, description="the allowed values")
    nullable: bool = Field(False, description="NaN (numbers) or empty text (BYTES) allowed")
    default: Scalar | None = Field(None, description="value imputed when the tensor is missing")

    @model_validator(mode="after")
    def _valid(self) -> Self:
        if self.index is None and self.name is None:
            raise ValueError("give index or name")
        _check_range(self.range)
        if self.range is not None and self.categories is not None:
            raise ValueError("give range or categories, not both")
        return self


class InputSpec(_Model):
    """One declared input tensor of the request."""

    name: str = Field(min_length=1, description="tensor name in the request")
    datatype: Datatype = Field(description="Open Inference Protocol datatype, e.g. FP32")
    shape: tuple[int, ...] = Field(description="dimensions; -1 matches any size")
    description: str = Field("", description="what the tensor holds")
    unit: str | None = Field(None, description="unit of measure of every element")
    features: tuple[FeatureSpec, ...] = Field((), description="per-feature rules (last axis)")
    default: Scalar | tuple[Scalar, ...] | None = Field(
        None, description="value(s) imputed when the tensor is missing (one row or all elements)"
    )

    @model_validator(mode="after")
    def _valid(self) -> Self:
        if any(dim < -1 for dim in self.shape):
            raise ValueError("shape: dimensions are sizes or -1 (any)")
        indexes = [f.index if f.index is not None else i for i, f in enumerate(self.features)]
        if len(set(indexes)) != len(indexes):
            raise ValueError("features: two features share an index")
        width = self.shape[-1] if self.shape else 1
        if width != -1 and any(i >= width for i in indexes):
            raise ValueError(f"features: an index is outside the last dimension ({width})")
        for value in _as_tuple(self.default) + tuple(
            f.default for f in self.features if f.default is not None
        ):
            if (self.datatype == "BYTES") != isinstance(value, str):
                kind = "strings" if self.datatype == "BYTES" else "numbers"
                raise ValueError(f"default: a {self.datatype} tensor's defaults are {kind}")
        return self

    def feature_index(self, position: int) -> int:
        """The last-axis index of ``features[position]``."""
        chosen = self.features[position].index
        return position if chosen is None else chosen

    def feature_label(self, position: int) -> str:
        """``tensor.name`` of a named feature, else ``tensor[index]``."""
        feature = self.features[position]
        if feature.name is not None:
            return f"{self.name}.{feature.name}"
        return f"{self.name}[{self.feature_index(position)}]"

    def default_row(self) -> tuple[Scalar, ...] | None:
        """The imputed values: ``default``, else every feature's default when all have one."""
        if self.default is not None:
            return _as_tuple(self.default)
        if not self.features or any(f.default is None for f in self.features):
            return None
        width = self.shape[-1] if self.shape else 1
        if width != len(self.features):
            return None
        by_index = {self.feature_index(i): f.default for i, f in enumerate(self.features)}
        return tuple(v for _, v in sorted(by_index.items()) if v is not None)


class OutputSpec(_Model):
    """One declared output tensor of the response."""

    name: str = Field(min_length=1, description="tensor name in the response")
    datatype: Datatype = Field(description="Open Inference Protocol datatype, e.g. FP32")
    shape: tuple[int, ...] = Field(description="dimensions; -1 matches any size")
    description: str = Field("", description="what the output means")
    unit: str | None = Field(None, description="unit of measure")
    range: tuple[float, float] | None = Field(None, description="valid [low, high], inclusive")
    allow_nan: bool = Field(False, description="NaN values are allowed")

    @model_validator(mode="after")
    def _valid(self) -> Self:
        if any(dim < -1 for dim in self.shape):
            raise ValueError("shape: dimensions are sizes or -1 (any)")
        _check_range(self.range)
        return self


class Contract(_Model):
    """A named, versioned contract of one model interface."""

    name: str = Field(min_length=1, description="contract name, e.g. fraud-score")
    version: str = Field(min_length=1, description="contract version; bump on every change")
    description: str = Field("", description="what the model does")
    inputs: tuple[InputSpec, ...] = Field(min_length=1, description="declared input tensors")
    outputs: tuple[OutputSpec, ...] = Field((), description="declared output tensors")

    @model_validator(mode="after")
    def _unique(self) -> Self:
        for side, specs in (("inputs", self.inputs), ("outputs", self.outputs)):
            names = [s.name for s in specs]
            if len(set(names)) != len(names):
                raise ValueError(f"{side}: tensor names must be unique")
        return self


def _as_tuple(value: Scalar | tuple[Scalar, ...] | None) -> tuple[Scalar, ...]:
    if value is None:
        return ()
    return value if isinstance(value, tuple) else (value,)


_UNION_TAGS = frozenset({"float", "str", "int", "bool", "tuple", "list", "function-after"})


def _path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif not out:
            out = str(part)
        elif part in _UNION_TAGS or "[" in part:  # a union member's tag, not a field
            continue
        else:
            out += f".{part}"
    return out


def parse_contract(data: Any, source: str = "") -> Contract:
    """Validate already-parsed YAML data; ConfigError names each failing field path."""
    if not isinstance(data, dict):
        raise ConfigError([("", "a contract file is a mapping")], source)
    from sidecar.config.load import shape_problem

    shape = shape_problem(data)  # deep nesting or an alias bomb: before the validators
    if shape is not None:
        raise ConfigError([("", shape)], source)
    try:
        return Contract.model_validate(data)
    except ValidationError as exc:
        problems: list[tuple[str, str]] = []
        for err in exc.errors():
            kind = err.get("type", "")
            message = ("unknown key" if kind == "extra_forbidden" else
                       "required" if kind == "missing" else
                       str(err.get("msg", "invalid")).removeprefix("Value error, "))
            problem = (_path(tuple(err["loc"])), message)
            if problem not in problems:
                problems.append(problem)
        raise ConfigError(problems, source) from exc


def load_contract(path: str | Path) -> Contract:
    """Read and validate a contract YAML file."""
    source = str(path)
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError([("", f"cannot read: {exc.strerror or exc}")], source) from exc
    try:
        data = yaml.safe_load(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError([("", f"not UTF-8 text (byte {exc.start})")], source) from None
    except yaml.YAMLError as exc:
        raise ConfigError([("", f"not YAML: {exc}")], source) from exc
    except RecursionError:
        raise ConfigError([("", "nested too deeply")], source) from None
    return parse_contract(data, source)

"""The human page of a contract: Markdown tables of inputs, features and outputs.

``sidecar contract docs FILE`` prints it; teams check it in beside the YAML it came from.
"""

from __future__ import annotations

from collections.abc import Sequence

from sidecar.contracts.model import Contract, FeatureSpec, InputSpec, OutputSpec, Scalar

__all__ = ["contract_markdown"]


def _cell(value: object) -> str:
    """Table-safe text: pipes escaped, newlines folded, empty as an em dash."""
    text = "" if value is None else str(value)
    text = text.replace("|", "\\|").replace("\n", " ").strip()
    return text or "—"


def _number(value: float) -> str:
    return f"{value:g}"


def _scalar(value: Scalar) -> str:
    return f'"{value}"' if isinstance(value, str) else _number(value)


def _shape(shape: Sequence[int]) -> str:
    return "[" + ", ".join("any" if d == -1 else str(d) for d in shape) + "]"


def _allowed(range_: tuple[float, float] | None, categories: Sequence[Scalar] | None) -> str:
    if range_ is not None:
        return f"[{_number(range_[0])}, {_number(range_[1])}]"
    if categories is not None:
        return ", ".join(_scalar(c) for c in categories)
    return ""


def _row(cells: Sequence[object]) -> str:
    return "| " + " | ".join(_cell(c) for c in cells) + " |"


def _table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    return [_row(header), "|" + "|".join("---" for _ in header) + "|", *(_row(r) for r in rows)]


def _default(spec: InputSpec) -> str:
    row = spec.default_row()
    return "" if row is None else ", ".join(_scalar(v) for v in row)


def _inputs(inputs: Sequence[InputSpec]) -> list[str]:
    rows = [[f"`{s.name}`", s.datatype, _shape(s.shape), s.description, s.unit,
             len(s.features) or "", _default(s)] for s in inputs]
    return _table(["tensor", "datatype", "shape", "description", "unit", "features",
                   "default"], rows)


def _features(spec: InputSpec) -> list[str]:
    rows: list[list[object]] = []
    for position, feature in enumerate(spec.features):
        rows.append(_feature_row(spec, position, feature))
    return _table(["index", "name", "description", "unit", "allowed", "nullable", "default"],
                  rows)


def _feature_row(spec: InputSpec, position: int, feature: FeatureSpec) -> list[object]:
    default = "" if feature.default is None else _scalar(feature.default)
    return [spec.feature_index(position), f"`{feature.name}`" if feature.name else "",
            feature.description, feature.unit, _allowed(feature.range, feature.categories),
            "yes" if feature.nullable else "no", default]


def _outputs(outputs: Sequence[OutputSpec]) -> list[str]:
    rows = [[f"`{s.name}`", s.datatype, _shape(s.shape), s.description, s.unit,
             _allowed(s.range, None), "yes" if s.allow_nan else "no"] for s in outputs]
    return _table(["tensor", "datatype", "shape", "description", "unit", "range", "NaN allowed"],
                  rows)


def contract_markdown(contract: Contract) -> str:
    """A Markdown page describing every declared tensor and feature of ``contract``."""
    lines = [f"# {contract.name} — contract version {contract.version}", ""]
    if contract.description:
        lines += [contract.description, ""]
    lines += ["## Inputs", "", *_inputs(contract.inputs), ""]
    for spec in contract.inputs:
        if not spec.features:
            continue
        lines += [f"### Features of `{spec.name}`", ""]
        if spec.description:
            lines += [spec.description, ""]
        lines += [*_features(spec), ""]
    lines += ["## Outputs", ""]
    lines += [*_outputs(contract.outputs), ""] if contract.outputs else ["None declared.", ""]
    lines += [
        "Shapes: `any` matches every size. Features index the last axis of their tensor. "
        "A numeric value is null when it is NaN, a BYTES value when it is empty.",
        "",
    ]
    return "\n".join(lines)

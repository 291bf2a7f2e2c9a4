"""Text forms of report values shared by the terminal and HTML renderers."""

from __future__ import annotations

from typing import Any

__all__ = ["MISSING", "fmt", "fmt_ci", "fmt_counts", "fmt_p", "fmt_params", "fmt_share",
           "fmt_share_ci"]

#: Shown for an undefined figure (JSON ``null``).
MISSING = "—"


def fmt(value: Any, digits: int = 4) -> str:
    """A number with ``digits`` significant digits; ``None`` becomes :data:`MISSING`."""
    if value is None:
        return MISSING
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def fmt_ci(ci: Any, digits: int = 3) -> str:
    """``[low, high]`` or :data:`MISSING`."""
    if not ci or ci[0] is None or ci[1] is None:
        return MISSING
    return f"[{fmt(ci[0], digits)}, {fmt(ci[1], digits)}]"


def fmt_p(p: Any) -> str:
    """A p-value, small ones in exponent form."""
    if p is None:
        return MISSING
    return "<1e-300" if p == 0 else (f"{p:.2e}" if p < 1e-3 else f"{p:.3f}")


def fmt_share(value: Any) -> str:
    """A share in [0, 1] as a percentage."""
    return MISSING if value is None else f"{100 * value:.2f}%"


def fmt_counts(counts: Any, share: bool = False) -> str:
    """``{"control": 48, "treat": 52}`` as ``control 48, treat 52`` (shares as percentages)."""
    if not isinstance(counts, dict) or not counts:
        return MISSING
    return ", ".join(f"{name} {fmt_share(value) if share else fmt(value)}"
                     for name, value in counts.items())


def fmt_share_ci(ci: Any) -> str:
    """A share interval as ``[1.20%, 3.40%]``, or :data:`MISSING`."""
    if not ci or ci[0] is None or ci[1] is None:
        return MISSING
    return f"[{fmt_share(ci[0])}, {fmt_share(ci[1])}]"


def fmt_params(params: Any) -> str:
    """Set parameters as ``name=value, ...`` (unset ones left out), or ``defaults``."""
    if not isinstance(params, dict):
        return "defaults"
    shown = [f"{k}={_plain(v)}" for k, v in params.items() if v not in (None, {}, [], False)]
    return ", ".join(shown) or "defaults"


def _plain(value: Any) -> str:
    """Nested settings as words (``rule newest; routes {...}``), never a Python repr."""
    if isinstance(value, dict):
        return "{" + "; ".join(f"{k} {_plain(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return ", ".join(_plain(v) for v in value) or "none"
    return fmt(value)

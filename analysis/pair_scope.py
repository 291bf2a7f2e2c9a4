"""The calls a pair report reads on an engine: the window, the route, the config versions.

The fields report and the divergence report (:mod:`analysis.fields_engine`,
:mod:`analysis.divergence_engine`) select their calls alike: calls in ``[since, until)`` on
the route, of the config versions :func:`analysis.experiment_engine.scope_engine` keeps for
the shadow calls (each route's newest unless one version or all are asked for). Both engine
modules import this one, which imports neither of them.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from analysis.engine import Engine
from analysis.experiment_engine import _kept, _time_bounds, scope_engine
from analysis.load import VersionScope

if TYPE_CHECKING:
    import ibis.expr.types as ir

__all__ = ["shadow_scope"]


def shadow_scope(
    engine: Engine, calls: ir.Table, since: str | datetime | None,
    until: str | datetime | None, route: str | None, version: str | None, all_versions: bool,
) -> tuple[ir.BooleanValue, ir.BooleanValue, VersionScope]:
    """(the calls kept, the shadow roles, the version scope) of ``calls``."""
    import ibis

    cond = _time_bounds(calls, since, until)
    if route is not None:
        cond &= calls.route == ibis.literal(route, type="string")
    shadow_role = calls.role.isin(["shadow", "replay"])
    scope = scope_engine(engine, "calls", cond & shadow_role, version=version,
                         all_versions=all_versions)
    return cond & _kept(calls, scope), shadow_role, scope

"""Issue 18.2: metrics and the admin API read a ``LiveState``, not the composition root.

No module under ``sidecar.telemetry`` or ``sidecar.admin`` imports ``sidecar.app``, not even
for type checking: the import circle is gone.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return names


@pytest.mark.parametrize("package", ["telemetry", "admin"])
def test_no_module_of_the_package_imports_the_app(package: str) -> None:
    files = sorted((ROOT / "sidecar" / package).rglob("*.py"))
    assert files
    offenders = [str(f.relative_to(ROOT)) for f in files
                 if {"sidecar.app", "sidecar.app.Sidecar"} & _imports(f)]
    assert offenders == []


def test_importing_metrics_and_admin_loads_no_app() -> None:
    code = ("import sys, sidecar.telemetry.metrics, sidecar.telemetry.live_view, "
            "sidecar.admin.http, sidecar.admin.reports; "
            "print('sidecar.app' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, timeout=120, check=True)
    assert out.stdout.strip() == "False"

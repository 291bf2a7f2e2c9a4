"""Fixtures shared by the analysis tests: one local Spark session for every engine test."""

from __future__ import annotations

import logging
import shutil
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest


def _java() -> None:
    """Spark needs a JVM: fail loudly (never skip) where there is none (issue 19.2)."""
    java = shutil.which("java")
    assert java, "java is not installed: Spark tests need Java 17 (.ci/run installs it)"
    out = subprocess.run([java, "-version"], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr


@pytest.fixture(scope="session")
def spark() -> Iterator[Any]:
    """One local Spark session for every engine test (starting one takes ~10 s)."""
    _java()
    from analysis.engine import spark_session

    session = spark_session("local[2]", "1GB")
    yield session
    session.stop()
    # py4j logs "Closing down clientserver connection" from __del__ at interpreter exit,
    # after pytest closed its capture streams ("--- Logging error ---" at the end of a run).
    logging.getLogger("py4j").setLevel(logging.WARNING)


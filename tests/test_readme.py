"""The README's configuration reference is a valid config: only its example files are
missing (certificates, fallback, contract) and its redaction key is unset."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from sidecar.config import parse_config
from sidecar.errors import ConfigError

README = Path(__file__).parents[1] / "README.md"


def test_config_reference_is_valid() -> None:
    text = README.read_text(encoding="utf-8")
    block = text.split("## Configuration reference", 1)[1].split("```yaml", 1)[1]
    data = yaml.safe_load(block.split("```", 1)[0])
    with pytest.raises(ConfigError) as info:
        parse_config(copy.deepcopy(data), base_dir=Path("/nonexistent"))
    for path, message in info.value.problems:
        assert "cannot read" in message or "environment variable" in message, (path, message)
    assert {p for p, _ in info.value.problems} >= {"tls.cert", "routes[0].fallback.static"}

"""A bad config names the field and serves nothing; a good one gets a stable version."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sidecar.config import load_config, parse_config
from sidecar.errors import ConfigError

GOOD = {
    "listen": "127.0.0.1:50551",
    "storage": {"path": "x.duckdb"},
    "backends": [
        {"name": "fraud-v7", "version": "7.0.1", "target": "127.0.0.1:6001"},
        {"name": "fraud-v8", "version": "8.0.0-rc1", "target": "127.0.0.1:6002"},
    ],
    "routes": [
        {
            "match": "/inference.GRPCInferenceService/ModelInfer",
            "primary": "fraud-v7",
            "timeout_ms": 80,
            "codec": "oip",
            "shadows": [
                {
                    "backend": "fraud-v8",
                    "sample_percent": 25,
                    "timeout_ms": 500,
                    "max_in_flight": 64,
                }
            ],
        }
    ],
}


def _with(path: list[object], value: object) -> dict:
    data = yaml.safe_load(yaml.safe_dump(GOOD))
    node = data
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return data


def test_good_config_is_valid_and_versioned() -> None:
    a = parse_config(GOOD)
    b = parse_config(yaml.safe_load(yaml.safe_dump(GOOD)))
    assert a.version == b.version and len(a.version) == 12
    changed = parse_config(_with(["routes", 0, "timeout_ms"], 81))
    assert changed.version != a.version


@pytest.mark.parametrize(
    ("path", "value", "field", "words"),
    [
        (["routes", 0, "shadows", 0, "sample_percent"], 120,
         "routes[0].shadows[0].sample_percent", "100"),
        (["routes", 0, "shadows", 0, "backend"], "nope",
         "routes[0].shadows[0].backend", "unknown backend 'nope'"),
        (["routes", 0, "primary"], "ghost", "routes[0].primary", "unknown backend 'ghost'"),
        (["backends", 1, "name"], "fraud-v7", "backends[1].name", "duplicate"),
        (["routes", 0, "bogus"], 1, "routes[0].bogus", "unknown key"),
        (["backends", 0, "target"], "no-port", "backends[0].target", "host:port"),
        (["routes", 0, "timeout_ms"], 0, "routes[0].timeout_ms", "greater than 0"),
        (["routes", 0, "match"], "not a method", "routes[0].match", "/pkg.Service/Method"),
        (["routes", 0, "codec"], "xml", "routes[0].codec", "oip"),
        (["storage", "flush_interval_ms"], -5, "storage.flush_interval_ms", "greater than 0"),
        (["routes", 0, "shadows", 0, "max_in_flight"], 0, "routes[0].shadows[0].max_in_flight", ""),
        (["routes", 0, "shadows", 0, "backend"], "fraud-v7",
         "routes[0].shadows[0].backend", "primary"),
    ],
)
def test_each_bad_field_is_named(path, value, field, words) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(_with(path, value))
    paths = [p for p, _ in info.value.problems]
    assert field in paths, info.value
    message = dict(info.value.problems)[field]
    assert words in message


def test_missing_required_sections() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"listen": "127.0.0.1:1"})
    assert {"backends", "routes"} <= {p for p, _ in info.value.problems}


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("listen: 127.0.0.1:1\nbackends: [\n  {name: a\n")
    with pytest.raises(ConfigError, match=r"YAML syntax error at line \d+"):
        load_config(bad)


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    bad = tmp_path / "list.yaml"
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(bad)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "absent.yaml")


def _sidecar(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sidecar", *args],
        capture_output=True, text=True, timeout=timeout, check=False,
    )


def test_validate_command(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(GOOD))
    ok = _sidecar("validate", str(good))
    assert ok.returncode == 0 and "valid" in ok.stdout
    bad = tmp_path / "badv.yaml"
    bad.write_text(yaml.safe_dump(_with(["routes", 0, "shadows", 0, "sample_percent"], 101)))
    res = _sidecar("validate", str(bad))
    assert res.returncode == 2
    assert "routes[0].shadows[0].sample_percent" in res.stderr
    assert "Traceback" not in res.stderr


def test_serve_with_bad_config_exits_2_and_serves_nothing(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    data = _with(["backends", 1, "name"], "fraud-v7")
    data["storage"]["path"] = str(tmp_path / "never.duckdb")
    bad.write_text(yaml.safe_dump(data))
    res = _sidecar("serve", "--config", str(bad))
    assert res.returncode == 2
    assert "backends[1].name" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "never.duckdb").exists()

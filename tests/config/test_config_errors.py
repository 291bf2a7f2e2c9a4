"""Issue 14.10: a config ``serve`` cannot use is refused by ``validate`` with a line naming
the problem and exit 2, never a traceback; the admin-exposure rule of issue 14.5 and the
secret masking of issue 14.9 at load."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import duckdb
import pytest
import yaml

from sidecar.cli import main
from sidecar.config import load_config, parse_config
from sidecar.config.load import MAX_DEPTH, canonical_json, parse_config_text
from sidecar.errors import ConfigError

GOOD: dict[str, Any] = {
    "listen": "127.0.0.1:50551",
    "admin": {"listen": "127.0.0.1:9901"},
    "storage": {"path": "x.duckdb"},
    "backends": [{"name": "a", "version": "1", "target": "127.0.0.1:6001"},
                 {"name": "b", "version": "2", "target": "127.0.0.1:6002"}],
    "routes": [{"match": "/x.Y/Z", "primary": "a"}],
}
CANARY = {"stable": "a", "candidate": "b", "steps": [5, 100]}


def _with(path: list[Any], value: Any) -> dict[str, Any]:
    data = copy.deepcopy(GOOD)
    node: Any = data
    for key in path[:-1]:
        node = node.setdefault(key, {}) if isinstance(key, str) else node[key]
    node[path[-1]] = value
    return data


INF, NAN = float("inf"), float("nan")

BAD: list[tuple[list[Any], Any, str]] = [
    # every float a field accepts, not only the one reported: .inf and .nan are refused
    (["outcomes", "max_future_s"], INF, "outcomes.max_future_s"),
    (["outcomes", "max_future_s"], 1e300, "outcomes.max_future_s"),
    (["routes", 0, "canary"], {**CANARY, "step_min_duration_s": INF},
     "routes[0].canary.step_min_duration_s"),
    (["routes", 0, "canary"], {**CANARY, "evaluation_interval_s": INF},
     "routes[0].canary.evaluation_interval_s"),
    (["triggers"], [{"name": "t", "kind": "age", "backend": "a", "max_age_days": INF}],
     "triggers[0].max_age_days"),
    (["triggers"], [{"name": "t", "kind": "quality", "model": "a", "bound": {"mae_max": INF}}],
     "triggers[0].bound.mae_max"),
    (["triggers"], [{"name": "t", "kind": "quality", "model": "a", "bound": {"mae_max": NAN}}],
     "triggers[0].quality.bound.mae_max"),
    (["routes", 0, "shadows"], [{"backend": "b", "sample_percent": NAN}],
     "routes[0].shadows[0].sample_percent"),
    (["storage", "duckdb_memory_limit"], "lots", "storage.duckdb_memory_limit"),
    (["storage", "duckdb_memory_limit"], "10B", "storage.duckdb_memory_limit"),
    (["storage", "duckdb_memory_limit"], "100", "storage.duckdb_memory_limit"),
    (["storage", "duckdb_memory_limit"], "1PB", "storage.duckdb_memory_limit"),
    # "$" matched before a trailing newline: every pattern-checked name
    (["routes", 0, "match"], "/x.Y/Z\n", "routes[0].match"),
    (["backends", 0, "name"], "a\n", "backends[0].name"),
    (["backends", 0, "target"], "127.0.0.1:6001\n", "backends[0].target"),
    (["listen"], "127.0.0.1:1\n", "listen"),
    (["routes", 0, "redact"], {"inputs": ["x"], "key_env": "KEY\n"}, "routes[0].redact.key_env"),
    (["routes", 0, "unit"], {"metadata": "x-user\n"}, "routes[0].unit"),
    (["storage", "export"], {"dir": "e", "replica": "r1\n"}, "storage.export.replica"),
    (["storage", "path"], "a\x00b.duckdb", "storage.path"),
    (["notify", "webhook"], "lots", "notify.webhook"),
    (["notify", "webhook"], "ftp://user:pw@host/x", "notify.webhook"),
    (["notify", "webhook"], "http://host:99999/x", "notify.webhook"),
    (["admin", "allowed_hosts"], ["evil.example\n"], "admin.allowed_hosts"),
]


@pytest.mark.parametrize(("path", "value", "field"), BAD, ids=[b[2] + "=" + repr(b[1])[:20]
                                                                for b in BAD])
def test_what_serve_refuses_validate_refuses(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                             path: list[Any], value: Any, field: str) -> None:
    """Issue 14.10: validate exits 2 naming the field; serve exits 2 the same way."""
    data = _with(path, value)
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    assert field in [p for p, _ in info.value.problems], info.value
    file = tmp_path / "c.yaml"
    file.write_text(yaml.safe_dump(data, allow_unicode=True))
    assert main(["validate", str(file)]) == 2
    assert main(["serve", "--config", str(file)]) == 2
    err = capsys.readouterr().err
    assert field in err and "Traceback" not in err
    assert "pw" not in err  # a URL's credentials are never echoed


@pytest.mark.parametrize("limit", ["8MB", "64MB", "64 MB", "1.5GB", "100MiB", "1GiB", "2tb"])
def test_every_memory_limit_validate_accepts_duckdb_accepts(limit: str) -> None:
    """Issue 14.10: the accepted spellings are ones DuckDB really opens a database with."""
    loaded = parse_config(_with(["storage", "duckdb_memory_limit"], limit))
    con = duckdb.connect(":memory:",
                         config={"memory_limit": loaded.config.storage.duckdb_memory_limit})
    con.close()


def test_deep_nesting_and_alias_bombs_are_config_errors(tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 14.10: RecursionError (deep YAML) and exponential aliases become exit 2."""
    deep = tmp_path / "deep.yaml"
    deep.write_text("a: " + "[" * 5000 + "]" * 5000 + "\n")
    shallow_but_deep = tmp_path / "deep2.yaml"
    shallow_but_deep.write_text(yaml.safe_dump(_with(["extra"], _nest(MAX_DEPTH + 5))))
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [*a{i-1}, *a{i-1}, *a{i-1}, *a{i-1}, *a{i-1}, *a{i-1}, *a{i-1}]"
              for i in range(1, 9)]
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("\n".join(lines) + "\n")
    for file in (deep, shallow_but_deep, bomb):
        with pytest.raises(ConfigError):
            load_config(file)
        assert main(["validate", str(file)]) == 2
    err = capsys.readouterr().err
    assert "nested more than" in err and "values" in err and "Traceback" not in err


def _nest(depth: int) -> Any:
    node: Any = 1
    for _ in range(depth):
        node = {"k": node}
    return node


def test_a_non_utf8_config_is_a_config_error(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 14.10: UnicodeDecodeError became exit 1 with a traceback; now exit 2."""
    file = tmp_path / "latin1.yaml"
    file.write_bytes(yaml.safe_dump(GOOD).encode() + b"# caf\xe9\n")
    assert main(["validate", str(file)]) == 2
    err = capsys.readouterr().err
    assert "not UTF-8" in err and "Traceback" not in err
    with pytest.raises(ConfigError, match="not UTF-8"):
        parse_config_text(b"listen: \xff\n")


def test_an_admin_listener_off_loopback_needs_a_token(monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 14.5: serve (and validate) refuse an admin API open to the network without a
    token, unless the config says so."""
    monkeypatch.delenv("SHADOWCAR_ADMIN_TOKEN", raising=False)
    for listen in ("0.0.0.0:9901", "[::]:9901", "10.1.2.3:9901", "admin.internal:9901"):
        with pytest.raises(ConfigError) as info:
            parse_config(_with(["admin", "listen"], listen))
        assert info.value.problems[0][0] == "admin.listen"
        assert "admin.allow_unauthenticated" in info.value.problems[0][1]
    for listen in ("127.0.0.1:9901", "127.3.2.1:1", "[::1]:9901", "localhost:9901"):
        parse_config(_with(["admin", "listen"], listen))
    open_ = _with(["admin"], {"listen": "0.0.0.0:9901", "allow_unauthenticated": True})
    parse_config(open_)
    parse_config(_with(["admin"], {"listen": "0.0.0.0:9901", "token": "t"}))
    monkeypatch.setenv("SHADOWCAR_ADMIN_TOKEN", "from-env")
    parse_config(_with(["admin", "listen"], "0.0.0.0:9901"))


def test_webhook_credentials_never_in_the_canonical_form() -> None:
    """Issue 14.9: what GET /v1/config and the configs table show is masked, yet a new
    secret is a new version."""
    url = "https://ops:s3cret@hooks.example.com/services/T0/B0/XYZSECRET?token=qtok#frag"
    data = _with(["notify"], {"webhook": url})
    data["telemetry"] = {"traces": {"exporter": "otlp",
                                    "endpoint": "http://u:otlpsecret@collector:4317"}}
    loaded = parse_config(data)
    assert loaded.config.notify.webhook == url  # the notifier still gets the real URL
    shown = canonical_json(loaded.config)
    for secret in ("s3cret", "XYZSECRET", "qtok", "frag", "otlpsecret", "ops:"):
        assert secret not in shown
    doc = json.loads(shown)
    assert doc["notify"]["webhook"] == "https://***@hooks.example.com/***?***#***"
    assert doc["telemetry"]["traces"]["endpoint"] == "http://***@collector:4317"
    other = parse_config(dict(data, notify={"webhook": url.replace("XYZ", "ABC")}))
    assert canonical_json(other.config) == shown and other.version != loaded.version


def test_unusable_tls_files_are_config_errors(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 14.10 (sibling): readable but unusable PEM passed validate; serve then died in
    ssl (admin, a traceback) or said 'cannot bind' (listener)."""
    (tmp_path / "bad.pem").write_text("not a certificate\n")
    data = copy.deepcopy(GOOD)
    data["tls"] = {"cert": "bad.pem", "key": "bad.pem", "client_ca": "bad.pem"}
    data["admin"]["tls"] = {"cert": "bad.pem", "key": "bad.pem"}
    data["backends"][0]["tls"] = {"ca": "bad.pem"}
    file = tmp_path / "c.yaml"
    file.write_text(yaml.safe_dump(data))
    assert main(["validate", str(file)]) == 2
    err = capsys.readouterr().err
    for field in ("tls.cert", "tls.client_ca", "admin.tls.cert", "backends[0].tls.ca"):
        assert f"{field}: not a PEM" in err


def test_other_commands_reading_files_fail_cleanly(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 14.10 (siblings): ``sidecar reload --config`` and ``contract check`` decoded
    the file before validating it (UnicodeDecodeError, exit 1); a contract could nest or
    alias without bound; ``audit --limit -1`` reached DuckDB."""
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes(b"name: caf\xe9\n")
    deep = tmp_path / "deep.yaml"
    deep.write_text("name: " + "[" * 5000 + "]" * 5000 + "\n")
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("\n".join(["a0: &a0 [x, x, x, x, x, x, x, x, x]"] + [
        f"a{i}: &a{i} [*a{i-1}, *a{i-1}, *a{i-1}, *a{i-1}, *a{i-1}, *a{i-1}, *a{i-1}]"
        for i in range(1, 9)] + ["inputs: *a8"]) + "\n")
    for file in (latin1, deep, bomb):
        assert main(["contract", "check", str(file)]) == 2
    assert main(["reload", "--admin", "http://127.0.0.1:9", "--config", str(latin1)]) == 2
    db = tmp_path / "a.duckdb"
    duckdb.connect(str(db)).close()
    assert main(["audit", "--db", str(db), "--limit", "-1"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "not UTF-8" in err and "--limit" in err

"""Issue 15.7: one meaning per exit code in every command. 0 fine; 1 only a fired trigger or a
failed gate; 2 a usage or input error; 3 the data could not be read; each --help says so."""

from __future__ import annotations

import socket
from pathlib import Path

import duckdb
import pytest
import yaml

from sidecar.cli import build_parser, main
from sidecar.sink.schema import migrate


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A readable recorded file, a corrupt one, and configs with and without triggers."""
    root = tmp_path_factory.mktemp("exit")
    db = root / "rec.duckdb"
    con = duckdb.connect(str(db))
    migrate(con)
    con.execute("""
        INSERT INTO calls (request_id, ts, route, backend, backend_version, role, served,
                           status, latency_ms, score)
        SELECT 'q' || i, TIMESTAMP '2024-01-01' + to_seconds(i), '/r', 'p', '1', 'primary',
               true, 'OK', 3.0, i / 100
        FROM range(50) t(i)
    """)
    con.close()
    corrupt = root / "corrupt.duckdb"
    corrupt.write_text("not a database\n" * 100)
    base = {"listen": "127.0.0.1:0", "storage": {"path": str(root / "x.duckdb")},
            "backends": [{"name": "p", "version": "1", "target": "127.0.0.1:1",
                          "provenance": {"trained_at": "2020-01-01"}}],
            "routes": [{"match": "*", "primary": "p"}]}
    quiet = root / "quiet.yaml"
    quiet.write_text(yaml.safe_dump(base))
    aged = root / "aged.yaml"
    aged.write_text(yaml.safe_dump({**base, "triggers": [
        {"name": "p-old", "kind": "age", "backend": "p", "max_age_days": 30}]}))
    invalid = root / "invalid.yaml"
    invalid.write_text(yaml.safe_dump({**base, "routes": [{"match": "*", "primary": "nope"}]}))
    down = f"http://127.0.0.1:{_free_port()}"
    return {"DB": str(db), "CORRUPT": str(corrupt), "MISSING": str(root / "missing.duckdb"),
            "QUIET": str(quiet), "AGED": str(aged), "INVALID": str(invalid), "DOWN": down,
            "OUT": str(root / "out"), "NODIR": str(root / "no-such-dir")}


CASES = [
    # fine
    (["validate", "QUIET"], 0, ""),
    (["models", "--db", "DB", "--json"], 0, ""),
    (["audit", "--db", "DB"], 0, ""),
    (["report", "divergence", "--db", "DB", "--format", "json"], 0, ""),
    (["check", "QUIET", "--db", "MISSING"], 0, ""),  # 15.10: nothing to check, said so
    # 1: a trigger fired, and nothing else
    (["check", "AGED", "--db", "DB"], 1, ""),
    # 2: usage or input
    (["validate", "INVALID"], 2, "primary"),
    (["validate", "MISSING"], 2, "missing.duckdb"),
    (["check", "INVALID", "--db", "DB"], 2, "primary"),
    (["check", "AGED"], 2, "exactly one of --db or --parquet"),
    (["models"], 2, "exactly one of --db or --parquet"),
    (["report", "divergence", "--db", "DB", "--since", "last tuesday"], 2, "ISO 8601"),
    (["replay", "--from", "DB", "--route", "/r", "--to", "127.0.0.1:1", "--backend-name", "c",
      "--backend-version", "1", "--since", "last tuesday"], 2, "ISO 8601"),
    (["gold", "run", "--set", "MISSING", "--target", "127.0.0.1:1"], 2, "no such gold set"),
    (["contract", "check", "MISSING"], 2, "cannot read"),
    (["serve", "--config", "INVALID"], 2, "primary"),
    # 3: the data could not be read (before: tracebacks, and check exited 1)
    (["check", "AGED", "--db", "MISSING"], 3, "no DuckDB file"),
    (["check", "AGED", "--db", "CORRUPT"], 3, "corrupt.duckdb"),
    (["check", "AGED", "--parquet", "NODIR"], 3, "no Parquet"),
    (["models", "--db", "MISSING"], 3, "no DuckDB file"),
    (["models", "--db", "CORRUPT"], 3, "corrupt.duckdb"),
    (["audit", "--db", "MISSING"], 3, "no DuckDB file"),
    (["audit", "--admin", "DOWN"], 3, "cannot reach the admin API"),
    (["canary", "status", "/r", "--admin", "DOWN"], 3, "cannot reach the admin API"),
    (["reload", "--admin", "DOWN"], 3, "cannot reach the admin API"),
    (["report", "divergence", "--db", "MISSING"], 3, "no DuckDB file"),
    (["report", "divergence", "--db", "CORRUPT"], 3, "corrupt.duckdb"),
    (["report", "drift", "--parquet", "NODIR"], 3, "no Parquet"),
    (["replay", "--from", "MISSING", "--route", "/r", "--to", "127.0.0.1:1", "--backend-name",
      "c", "--backend-version", "1"], 3, "no such file"),
    (["replay", "--from", "CORRUPT", "--route", "/r", "--to", "127.0.0.1:1", "--backend-name",
      "c", "--backend-version", "1"], 3, "corrupt.duckdb"),
    (["gold", "capture", "--from", "MISSING", "--route", "/r", "-o", "OUT"], 3, "no such file"),
    (["gold", "capture", "--from", "CORRUPT", "--route", "/r", "-o", "OUT"], 3,
     "corrupt.duckdb"),
]


@pytest.mark.parametrize(("argv", "code", "needle"), CASES,
                         ids=[" ".join(c[0][:3]) + f" -> {c[1]}" for c in CASES])
def test_exit_code(files: dict[str, str], capsys: pytest.CaptureFixture[str],
                   argv: list[str], code: int, needle: str) -> None:
    """Issue 15.7: each command's outcome has the code its --help promises."""
    assert main([files.get(a, a) for a in argv]) == code
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    assert needle in (out + err)


def test_check_with_no_triggers_says_so(files: dict[str, str],
                                        capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 15.10: `sidecar check` on a config without triggers printed nothing."""
    assert main(["check", files["QUIET"], "--db", files["DB"]]) == 0
    out = capsys.readouterr().out
    assert "no triggers configured" in out and files["QUIET"] in out
    assert main(["check", files["QUIET"], "--db", files["DB"], "--json"]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == "[]" and "no triggers configured" in captured.err


def test_check_summary_line(files: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", files["AGED"], "--db", files["DB"]]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("FIRED  p-old") and lines[-1] == "1 of 1 triggers fired (exit 1)"


def _commands(parser: object, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    import argparse

    found = []
    for action in getattr(parser, "_actions", []):
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                found.append((*prefix, name))
                found += _commands(child, (*prefix, name))
    return found


def test_every_help_lists_the_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 15.7: `sidecar --help` and every subcommand's --help end with the codes."""
    commands = _commands(build_parser())
    assert {("report",), ("check",), ("replay",), ("gold", "run"), ("contract", "check"),
            ("canary",), ("models",), ("audit",), ("serve",)} <= set(commands)
    for command in [(), *commands]:
        with pytest.raises(SystemExit) as done:
            main([*command, "--help"])
        assert done.value.code == 0
        text = " ".join(capsys.readouterr().out.split())
        assert "exit codes: 0 fine; 1 a trigger fired or a gate failed; 2 usage" in text, command
        assert "3 the data could not be read" in text, command


def test_argparse_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in ([], ["report"], ["check"], ["models", "--nope"]):
        with pytest.raises(SystemExit) as done:
            main(argv)
        assert done.value.code == 2
    capsys.readouterr()


async def test_serve_exit_codes(tmp_path: Path, echo) -> None:
    """Issue 15.7: `sidecar serve` on a recording file another sidecar holds cannot open its
    data (3); on a port another process holds, its listen address is the input error (2)."""
    import asyncio
    import os
    import sys

    from sidecar.app import Sidecar
    from sidecar.config import parse_config
    from tests.conftest import sidecar_config

    primary = await echo()
    db = tmp_path / "held.duckdb"
    data = sidecar_config(db, {"p": primary.target}, [{"match": "*", "primary": "p"}])
    async with Sidecar(parse_config(data)) as running:
        for name, change, code, needle in [
            ("locked", {"admin": {"listen": None}}, 3, "cannot open recording database"),
            ("bound", {"admin": {"listen": None}, "listen": f"127.0.0.1:{running.port}",
                       "storage": {"path": str(tmp_path / "other.duckdb")}}, 2, "cannot bind"),
        ]:
            config = tmp_path / f"{name}.yaml"
            config.write_text(yaml.safe_dump({**data, **change}))
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "sidecar", "serve", "--config", str(config),
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                env=dict(os.environ))
            _, err = await asyncio.wait_for(proc.communicate(), timeout=120)
            assert proc.returncode == code, (name, err.decode()[-2000:])
            assert needle in err.decode() and "Traceback" not in err.decode(), name

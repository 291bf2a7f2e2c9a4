"""The docs hold when followed: every config snippet in README.md and docs/*.md loads with the
real loader, the README's reference shows every key, and every `sidecar ...` command shown
exists with the options shown (and the main ones run on a small recording)."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel, ValidationError

from sidecar.cli import build_parser, main
from sidecar.config import parse_config
from sidecar.config.models import Config
from sidecar.errors import ConfigError

ROOT = Path(__file__).parents[1]
README = ROOT / "README.md"
DOCS = sorted([README, *(ROOT / "docs").glob("*.md")])
#: Files a snippet may name that a test cannot make real: TLS material.
TLS_FIELDS = {"cert", "key", "client_ca", "ca"}
_FENCE = re.compile(r"^```(\w*)\s*$")


def fenced(path: Path) -> Iterator[tuple[int, str, str]]:
    """(line, language, text) of every fenced code block of a Markdown file."""
    lang, start, lines = None, 0, []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        found = _FENCE.match(line)
        if lang is None and found:
            lang, start, lines = found.group(1), number, []
        elif lang is not None and line.startswith("```"):
            yield start, lang, "\n".join(lines)
            lang = None
        elif lang is not None:
            lines.append(line)


def config_snippets() -> list[tuple[str, dict[str, Any]]]:
    """YAML blocks that look like a sidecar config: a mapping of top-level config keys."""
    out = []
    for path in DOCS:
        for line, lang, text in fenced(path):
            if lang != "yaml":
                continue
            data = yaml.safe_load(text)
            if isinstance(data, dict) and data and set(data) <= set(Config.model_fields):
                out.append((f"{path.relative_to(ROOT)}:{line}", data))
    return out


def reference_block() -> dict[str, Any]:
    text = README.read_text(encoding="utf-8")
    block = text.split("## Configuration reference", 1)[1].split("```yaml", 1)[1]
    data: dict[str, Any] = yaml.safe_load(block.split("```", 1)[0])
    return data


@pytest.fixture
def example_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The files and variables the snippets name, except TLS material."""
    (tmp_path / "fallback.json").write_text("{}", encoding="utf-8")
    contract = next(text for line, lang, text in fenced(ROOT / "docs" / "contracts.md")
                    if lang == "yaml")
    (tmp_path / "fraud-contract.yaml").write_text(contract, encoding="utf-8")
    monkeypatch.setenv("SHADOWCAR_REDACTION_KEY", "0123456789abcdef0123456789abcdef")
    return tmp_path


def _minimal(data: dict[str, Any]) -> dict[str, Any]:
    """A fragment (e.g. only ``storage:``) completed to a config with one backend and route."""
    full = {"backends": [{"name": "m", "version": "1", "target": "127.0.0.1:1"}],
            "routes": [{"match": "*", "primary": "m"}]}
    return full | data


@pytest.mark.parametrize("where,data", config_snippets(), ids=lambda v: v if isinstance(
    v, str) else "")
def test_config_snippet_loads(where: str, data: dict[str, Any], example_files: Path) -> None:
    """Issue 15.11: every config snippet of the README and docs loads with the real loader;
    the only problems allowed are TLS files that a test cannot provide."""
    try:
        parse_config(_minimal(data), base_dir=example_files)
    except ConfigError as exc:
        for path, message in exc.problems:
            leaf = re.split(r"[.\[]", path)[-1]
            assert leaf in TLS_FIELDS and "cannot read" in message, (where, path, message)


def test_snippets_are_found() -> None:
    found = [where for where, _ in config_snippets()]
    assert any(w.startswith("README.md") for w in found), found
    assert any(w.startswith("docs/fleet-data.md") for w in found), found


def _models(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models(arg)]


def _owner(model: type[BaseModel], name: str) -> str:
    """The class that declares a field (trigger kinds share ``name`` and ``description``)."""
    return next(c.__name__ for c in model.__mro__ if name in getattr(c, "__annotations__", {}))


def _reachable(model: type[BaseModel], seen: set[tuple[str, str]]) -> set[tuple[str, str]]:
    for name, field in model.model_fields.items():
        key = (_owner(model, name), name)
        if key in seen:
            continue
        seen.add(key)
        for sub in _models(field.annotation):
            _reachable(sub, seen)
    return seen


def _shown(model: type[BaseModel], data: Any, out: set[tuple[str, str]]) -> None:
    """(model, key) for every key the data gives a model, following the config's types."""
    if not isinstance(data, dict):
        return
    for key, value in data.items():
        field = model.model_fields.get(key)
        if field is None:
            continue
        out.add((_owner(model, key), key))
        candidates = _models(field.annotation)
        for item in value if isinstance(value, list) else [value]:
            if not isinstance(item, dict):
                continue
            for candidate in candidates:  # unions (trigger kinds): the one the item fits
                try:
                    candidate.model_validate(item)
                except ValidationError:
                    continue
                _shown(candidate, item, out)
                break
            else:
                if candidates:
                    _shown(candidates[0], item, out)


def test_config_reference_shows_every_key() -> None:
    """Issue 15.11: the README's configuration reference is complete: every key of every
    part of the config appears in it (a new key needs a line there)."""
    shown: set[tuple[str, str]] = set()
    _shown(Config, reference_block(), shown)
    # Alternatives that cannot stand together (a bound's other figures, the other unit
    # sources) may be shown in a comment: `# or {mae_max: ...}`.
    text = README.read_text(encoding="utf-8").split("## Configuration reference", 1)[1]
    comments = " ".join(line.split("#", 1)[1] for line in
                        text.split("```yaml", 1)[1].split("```", 1)[0].splitlines()
                        if "#" in line)
    in_comments = set(re.findall(r"(\w+):", comments))
    missing = sorted(f"{m}.{k}" for m, k in _reachable(Config, set()) - shown
                     if k not in in_comments)
    assert not missing, f"README.md's configuration reference lacks: {', '.join(missing)}"


# -- commands ---------------------------------------------------------------------------
def shown_commands() -> list[tuple[str, list[str]]]:
    """Every `sidecar ...` command in a shell block (or after `$ ` in a text block)."""
    out = []
    for path in DOCS:
        for line, lang, text in fenced(path):
            if lang not in ("sh", "text"):
                continue
            joined = re.sub(r"\\\n\s*", " ", text)
            for number, command in enumerate(joined.splitlines()):
                command = command.strip()
                if lang == "text":
                    if not command.startswith("$ sidecar "):
                        continue
                    command = command[2:]
                if not command.startswith("sidecar "):
                    continue
                command = command.split(" #", 1)[0].split(" &", 1)[0]
                out.append((f"{path.relative_to(ROOT)}:{line + number + 1}",
                            shlex.split(command.replace("[", " ").replace("]", " "))))
        # ... and in the prose: `sidecar canary approve ROUTE`
        for number, text in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            for command in re.findall(r"`(sidecar [^`]+)`", text):
                command = command.replace("[", " ").replace("]", " ").replace("...", " ")
                out.append((f"{path.relative_to(ROOT)}:{number}",
                            shlex.split(command, posix=True)))
    return out


def _subparsers(parser: Any) -> dict[str, Any]:
    for action in parser._actions:
        if action.choices and hasattr(action, "_name_parser_map"):
            return dict(action.choices)
    return {}


def _resolve(tokens: list[str]) -> tuple[Any, list[str], list[str]]:
    """The (sub)parser a command names, the command words, and the remaining tokens."""
    parser, words, rest = build_parser(), ["sidecar"], tokens[1:]
    while rest and rest[0] in _subparsers(parser):
        parser = _subparsers(parser)[rest[0]]
        words.append(rest.pop(0))
    return parser, words, rest


def test_shown_commands_exist_with_their_options(capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 15.11: every command shown in the README and docs names a real (sub)command,
    every option it shows is one of that command's, every alternative of a `a|b|c` choice
    is accepted, and `--help` answers (exit 0)."""
    commands = shown_commands()
    assert len(commands) >= 15, commands
    top = build_parser()
    global_options = {o for a in top._actions for o in a.option_strings}
    for where, tokens in commands:
        if len(tokens) > 1 and tokens[1].isupper():
            continue  # `sidecar COMMAND --help`: a placeholder
        parser, words, rest = _resolve(tokens)
        if tokens[1:] != ["--help"]:
            assert len(words) > 1, (where, tokens)
        by_option = {o: a for a in parser._actions for o in a.option_strings}
        options = set(by_option) | global_options
        positional = [a.choices for a in parser._actions
                      if not a.option_strings and a.choices
                      and not hasattr(a, "_name_parser_map")]
        previous = None
        for token in rest:
            for alternative in token.split("|") if not token.startswith("/") else [token]:
                if alternative.startswith("-") and alternative != "-":
                    assert alternative.split("=", 1)[0] in options, (where, alternative)
                elif "|" not in token or not alternative or alternative.isupper():
                    continue  # a value or a placeholder (FILE, DIR)
                elif previous in by_option and by_option[previous].choices:
                    assert alternative in by_option[previous].choices, (where, alternative)
                else:
                    assert positional and alternative in positional[0], (where, alternative)
            previous = token
        with pytest.raises(SystemExit) as done:
            main([*words[1:], "--help"])
        assert done.value.code == 0, where
    out = capsys.readouterr().out
    assert "usage: sidecar" in out


def test_top_level_help_names_every_report_kind(capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 15.11: `sidecar --help` says every report kind (quality and fields were left
    out)."""
    with pytest.raises(SystemExit):
        main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    report = _subparsers(build_parser())["report"]
    kinds = next(a.choices for a in report._actions if a.dest == "kind")
    for kind in kinds:
        assert kind in text.split("report", 1)[1], kind


# -- a real run of the analysis commands on a small recording ---------------------------
@pytest.fixture
async def small_recording(tmp_path: Path) -> tuple[Path, Path]:
    """A DuckDB file a stopped sidecar wrote (a primary, a shadow, outcomes), and the
    config that wrote it (with triggers of every kind)."""
    import dataclasses

    import aiohttp
    import grpc

    from sidecar.app import Sidecar
    from sidecar.demo.models import build_infer_request, make_demo_models, start_model_server

    primary, retrained = make_demo_models()
    db = tmp_path / "small.duckdb"
    method = "/inference.GRPCInferenceService/ModelInfer"
    async with (await start_model_server(primary) as p,
                await start_model_server(dataclasses.replace(retrained)) as s):
        config = {
            "listen": "127.0.0.1:0", "admin": {"listen": "127.0.0.1:0"},
            "storage": {"path": str(db), "flush_interval_ms": 50},
            "backends": [
                {"name": "fraud-v7", "version": "7", "target": p.target,
                 "provenance": {"trained_at": "2026-01-01"}},
                {"name": "fraud-v8", "version": "8", "target": s.target}],
            "triggers": [
                {"name": "old", "kind": "age", "backend": "fraud-v7", "max_age_days": 3650},
                {"name": "div", "kind": "divergence", "route": method, "shadow": "fraud-v8",
                 "max_disagreement": 0.5},
                {"name": "auc", "kind": "quality", "model": "fraud-v7",
                 "bound": {"auc_min": 0.5}},
                {"name": "drift", "kind": "drift", "route": method, "psi_max": 0.5}],
            "routes": [{"match": method, "primary": "fraud-v7", "codec": "oip",
                        "shadows": [{"backend": "fraud-v8"}]}],
        }
        cfg_path = tmp_path / "shadowcar.yaml"
        cfg_path.write_text(yaml.safe_dump(config), encoding="utf-8")
        sc = Sidecar(parse_config(config))
        await sc.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{sc.port}") as channel:
                infer = channel.unary_unary(method)
                for i in range(60):
                    row = [((i * 7 + j) % 11 - 5) / 3 for j in range(8)]
                    await infer(build_infer_request("demo", row),
                                metadata=(("x-request-id", f"r{i}"),), timeout=30)
            assert sc.admin is not None
            events = [{"event_id": f"e{i}", "request_id": f"r{i}", "metric": "label",
                       "value": i % 2} for i in range(60)]
            async with aiohttp.ClientSession() as http, http.post(
                f"http://127.0.0.1:{sc.admin.port}/v1/outcomes", json={"events": events}
            ) as resp:
                assert resp.status == 200
        finally:
            await sc.aclose()
    return db, cfg_path


@pytest.mark.slow
@pytest.mark.subprocess
def test_analysis_commands_run_on_a_small_recording(
    small_recording: tuple[Path, Path], tmp_path: Path
) -> None:
    """Issue 15.11: the README's analysis commands, run for real on a stopped sidecar's file."""
    db, cfg = small_recording
    contract = tmp_path / "contract.yaml"
    contract.write_text(next(text for _, lang, text in fenced(ROOT / "docs" / "contracts.md")
                             if lang == "yaml"), encoding="utf-8")
    runs: list[tuple[list[str], set[int]]] = [
        ([*f"report {kind} --db {db} --since 24h --format json".split()], {0})
        for kind in ("divergence", "drift", "quality", "fields")
    ]
    runs += [
        (["report", "divergence", "--db", str(db), "--format", "html", "-o",
          str(tmp_path / "d.html")], {0}),
        (["validate", str(cfg)], {0}),
        (["models", "--db", str(db)], {0}),
        (["audit", "--db", str(db)], {0}),
        (["check", str(cfg), "--db", str(db)], {0, 1}),  # 1: a trigger fired
        (["contract", "docs", str(contract)], {0}),
    ]
    for args, codes in runs:
        done = subprocess.run([sys.executable, "-m", "sidecar", *args], capture_output=True,
                              text=True, timeout=120, check=False, cwd=tmp_path)
        assert done.returncode in codes, (args, done.stdout[-1500:], done.stderr[-1500:])
        assert done.stdout.strip() or (tmp_path / "d.html").exists(), args

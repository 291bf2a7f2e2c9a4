"""Reading, validating and versioning a configuration file.

Errors name the field path (``routes[1].shadows[0].sample_percent: ...``).
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from pydantic import BaseModel, SecretStr, ValidationError

from sidecar.config import material
from sidecar.config.models import Config, RouteConfig
from sidecar.errors import ConfigError

if TYPE_CHECKING:
    from sidecar.sink.redaction import Redactor

__all__ = [
    "LoadedConfig",
    "canonical_json",
    "is_loopback",
    "load_config",
    "parse_config",
    "parse_config_text",
    "shape_problem",
]

ADMIN_TOKEN_ENV = "SHADOWCAR_ADMIN_TOKEN"
#: Deepest nesting of a config document; real ones use fewer than ten levels.
MAX_DEPTH = 32
#: Values (scalars and containers, YAML aliases counted at every use) in one document.
MAX_VALUES = 200_000


@dataclass(frozen=True, slots=True)
class LoadedConfig:
    """A validated configuration with its version (hash of its canonical form), and the
    static fallback responses it names, encoded once (route match -> bytes)."""

    config: Config
    version: str
    source: str
    static_fallbacks: dict[str, bytes] = field(default_factory=dict)
    #: Contents of the files the config names (TLS material), by field path.
    files: dict[str, bytes] = field(default_factory=dict)
    #: Redaction keys by route match (read from the environment at load).
    redaction_keys: dict[str, bytes] = field(default_factory=dict)
    #: Data contracts by route match (loaded from their own YAML files).
    contracts: dict[str, Any] = field(default_factory=dict)
    #: Descriptor codecs by route match (``codec: descriptor:FILE``), built at load.
    codecs: dict[str, Any] = field(default_factory=dict)
    #: How outcome unit ids are redacted: like the requests' (``redact.unit``), or None.
    unit_redactor: Redactor | None = None

    @property
    def admin_token(self) -> str | None:
        env = os.environ.get(ADMIN_TOKEN_ENV)
        if env:
            return env
        token = self.config.admin.token
        return token.get_secret_value() if token is not None else None


#: Segments pydantic adds to an error's location for a union member, not a config key.
_UNION_TAGS = frozenset({"function-after", "function-before", "function-wrap", "str", "int",
                         "float", "bool", "tuple", "list", "dict", "none"})


def _path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in _UNION_TAGS or "[" in part:  # e.g. function-after[_check(), UnitSource]
            continue
        else:
            out += f".{part}" if out else str(part)
    return out


def _message(err: dict[str, Any]) -> str:
    kind = err.get("type", "")
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "required"
    msg = str(err.get("msg", "invalid"))
    return msg.removeprefix("Value error, ")


def _cross_check(config: Config) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    names: dict[str, int] = {}
    for i, backend in enumerate(config.backends):
        if backend.name in names:
            problems.append(
                (f"backends[{i}].name", f"duplicate backend name {backend.name!r}")
            )
        names.setdefault(backend.name, i)
    known = ", ".join(sorted(names))
    matches: set[str] = set()
    for r, route in enumerate(config.routes):
        if route.match in matches:
            problems.append((f"routes[{r}].match", f"duplicate route {route.match!r}"))
        matches.add(route.match)
        if route.primary not in names:
            problems.append(
                (f"routes[{r}].primary", f"unknown backend {route.primary!r} (known: {known})")
            )
        seen: set[str] = set()
        for s, shadow in enumerate(route.shadows):
            where = f"routes[{r}].shadows[{s}].backend"
            if shadow.backend not in names:
                problems.append((where, f"unknown backend {shadow.backend!r} (known: {known})"))
            elif shadow.backend == route.primary:
                problems.append((where, "a shadow cannot be the route's primary"))
            elif shadow.backend in seen:
                problems.append((where, f"backend {shadow.backend!r} is mirrored twice"))
            seen.add(shadow.backend)
            if shadow.replica_of is not None and shadow.replica_of not in names:
                problems.append((f"routes[{r}].shadows[{s}].replica_of",
                                 f"unknown backend {shadow.replica_of!r} (known: {known})"))
        problems.extend(_check_tests(r, route, names, known))
    problems.extend(_check_models(config))
    return problems


#: The one method a per-model route may match: the others of the protocol pass through to
#: the primary of the route that serves the model they name (docs/oip.md).
OIP_INFER = "/inference.GRPCInferenceService/ModelInfer"


def _route_backends(route: RouteConfig) -> set[str]:
    """Every backend a route sends requests to, in any role."""
    names = {route.primary} | {s.backend for s in route.shadows}
    names |= {v.backend for exp in route.all_experiments for v in exp.variants}
    if route.canary is not None:
        names |= {route.canary.stable, route.canary.candidate}
    if route.fallback is not None and route.fallback.backend is not None:
        names.add(route.fallback.backend)
    return names


def _check_models(config: Config) -> list[tuple[str, str]]:
    """Model names are OIP's: a backend's ``model`` needs a ``codec: oip`` route among those
    it serves, a route's ``match.model`` needs ``codec: oip`` and matches ModelInfer."""
    problems: list[tuple[str, str]] = []
    for r, route in enumerate(config.routes):
        if route.model is None:
            continue
        if route.method != OIP_INFER:
            problems.append((f"routes[{r}].match.method", f"a per-model route matches "
                             f"{OIP_INFER} (the protocol's other calls follow it)"))
        if route.codec != "oip":
            problems.append((f"routes[{r}].codec",
                             "a per-model route (match with model) needs codec: oip"))
    for i, backend in enumerate(config.backends):
        serves = [route for route in config.routes if backend.name in _route_backends(route)]
        if not serves or any(route.codec == "oip" for route in serves):
            continue  # other routes of the backend forward their bytes as they come
        for key in ("model", "model_version"):
            if getattr(backend, key) is not None:
                problems.append((f"backends[{i}].{key}", (
                    f"backend {backend.name!r} serves no route with codec: oip (route "
                    f"{serves[0].match!r} has codec {serves[0].codec}): model names are "
                    "rewritten in OIP requests only")))
    return problems


def _check_tests(
    r: int, route: RouteConfig, names: dict[str, int], known: str
) -> list[tuple[str, str]]:
    """Experiments and canaries: backends exist, layers do not overlap, no mixing."""
    problems: list[tuple[str, str]] = []
    experiments = route.all_experiments
    where_of = {}
    for e, exp in enumerate(route.experiments):
        where_of[id(exp)] = f"routes[{r}].experiments[{e}]"
    if route.experiment is not None:
        where_of[id(route.experiment)] = f"routes[{r}].experiment"
    for exp in experiments:
        where = where_of[id(exp)]
        for v, variant in enumerate(exp.variants):
            if variant.backend not in names:
                problems.append((
                    f"{where}.variants[{v}].backend",
                    f"unknown backend {variant.backend!r} (known: {known})",
                ))
    exp_names = [e.name for e in experiments]
    for name in {n for n in exp_names if exp_names.count(n) > 1}:
        problems.append((f"routes[{r}].experiments", f"experiment {name!r} appears twice"))
    for i, a in enumerate(experiments):
        for b in experiments[i + 1:]:
            na, nb = a.namespace, b.namespace
            if na is None or nb is None:
                problems.append((
                    where_of[id(b)] + ".namespace",
                    f"experiments {a.name!r} and {b.name!r} share a route: give both a "
                    "namespace with disjoint ranges",
                ))
            elif na.name == nb.name and na.start < nb.end and nb.start < na.end:
                problems.append((
                    where_of[id(b)] + ".namespace",
                    f"overlaps {a.name!r} in namespace {na.name!r}",
                ))
    fb = route.fallback
    if fb is not None and fb.backend is not None:
        if fb.backend not in names:
            problems.append((f"routes[{r}].fallback.backend",
                             f"unknown backend {fb.backend!r} (known: {known})"))
        elif fb.backend == route.primary:
            problems.append((f"routes[{r}].fallback.backend", "must differ from the primary"))
    canary = route.canary
    if canary is not None:
        where = f"routes[{r}].canary"
        for key in ("stable", "candidate"):
            name = getattr(canary, key)
            if name not in names:
                problems.append((f"{where}.{key}", f"unknown backend {name!r} (known: {known})"))
        if canary.stable != route.primary:
            problems.append((f"{where}.stable", "must be the route's primary"))
        if canary.candidate == canary.stable:
            problems.append((f"{where}.candidate", "must differ from stable"))
        if experiments:
            problems.append((where, "a route runs either experiments or a canary, not both"))
    return problems


def shape_problem(data: Any) -> str | None:
    """Why ``data`` is too deep or too large to validate (None when it is fine).

    Iterative, and it counts each use of a YAML alias, so neither a deep document nor an
    alias bomb reaches the recursive validators.
    """
    stack: list[tuple[Any, int]] = [(data, 1)]
    seen = 0
    while stack:
        node, depth = stack.pop()
        seen += 1
        if seen > MAX_VALUES:
            return f"the document holds more than {MAX_VALUES} values (YAML aliases count " \
                   "at every use)"
        if isinstance(node, dict | list):
            if depth > MAX_DEPTH:
                return f"nested more than {MAX_DEPTH} levels deep"
            children = node.values() if isinstance(node, dict) else node
            stack.extend((child, depth + 1) for child in children)
    return None


def _unsafe_values(node: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """Values every field type lets through but serve cannot use: inf/nan (YAML ``.inf``,
    "nan") and NUL characters (file names, names)."""
    if isinstance(node, BaseModel):
        for name in type(node).model_fields:
            yield from _unsafe_values(getattr(node, name), f"{path}.{name}" if path else name)
    elif isinstance(node, tuple | list):
        for i, item in enumerate(node):
            yield from _unsafe_values(item, f"{path}[{i}]")
    elif isinstance(node, dict):
        for key, item in node.items():
            yield from _unsafe_values(item, f"{path}.{key}")
    elif isinstance(node, float) and not math.isfinite(node):
        yield path, "must be a finite number"
    elif isinstance(node, str) and "\x00" in node:
        yield path, "must not contain a NUL character"
    elif isinstance(node, SecretStr) and "\x00" in node.get_secret_value():
        yield path, "must not contain a NUL character"


def is_loopback(host: str) -> bool:
    """Is ``host`` (of a listen address) reachable from this machine only?"""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _admin_exposure(config: Config) -> list[tuple[str, str]]:
    """An admin listener reachable off this host must have a token (or say it needs none)."""
    admin = config.admin
    if admin.listen is None or admin.allow_unauthenticated:
        return []
    if admin.token is not None or os.environ.get(ADMIN_TOKEN_ENV):
        return []
    host = admin.listen.rpartition(":")[0]
    if is_loopback(host):
        return []
    return [("admin.listen", f"{admin.listen} is reachable from other hosts and no admin "
             f"token is set: set admin.token or env {ADMIN_TOKEN_ENV}, listen on "
             "127.0.0.1, or set admin.allow_unauthenticated: true")]


def _secrets_digest(config: Config) -> bytes:
    """What the canonical form masks (token, webhook, endpoint), hashed: a changed secret
    is a new version although its text never appears in the stored config."""
    token = config.admin.token.get_secret_value() if config.admin.token else ""
    raw = json.dumps([token, config.notify.webhook, config.telemetry.traces.endpoint])
    return hashlib.sha256(raw.encode()).digest()


def canonical_json(config: Config) -> str:
    """The canonical form that versions a config; secrets are masked."""
    data = config.model_dump(mode="json")
    return json.dumps(data, sort_keys=True, separators=(",", ":"))


def parse_config(data: Any, source: str = "", base_dir: Path | None = None) -> LoadedConfig:
    """Validate already-parsed YAML/JSON data."""
    if not isinstance(data, dict):
        raise ConfigError([("", "the top level must be a mapping")], source)
    shape = shape_problem(data)
    if shape is not None:
        raise ConfigError([("", shape)], source)
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
        paths = [_path(tuple(e["loc"])) for e in errors]
        problems = [
            (path, _message(dict(e)))
            for path, e in zip(paths, errors, strict=True)
            # A failed item also makes its list "too short"; the item's error says it all.
            if not (
                e["type"] == "too_short"
                and any(other.startswith(path + "[") for other in paths)
            )
        ]
        raise ConfigError(problems, source) from None
    problems = list(_unsafe_values(config))
    problems += _cross_check(config)
    problems += _admin_exposure(config)
    base = base_dir or Path.cwd()  # relative file names in the config are relative to this
    statics, more = material.static_fallbacks(config, base)
    problems.extend(more)
    files, more = material.files(config, base)
    problems.extend(more)
    keys, more = material.redaction_keys(config)
    problems.extend(more)
    unit_redactor, more = material.unit_redaction(config, keys)
    problems.extend(more)
    contracts, more = material.contracts(config, base)
    problems.extend(more)
    codecs, more = material.descriptor_codecs(config, base)
    problems.extend(more)
    from sidecar.triggers.config import cross_check_triggers

    problems.extend(cross_check_triggers(
        config.triggers, {b.name for b in config.backends}, {r.match for r in config.routes}
    ))
    if problems:
        raise ConfigError(problems, source)
    # Secrets are part of the version only through their hash, never in clear.
    canonical = canonical_json(config)
    digest = hashlib.sha256(canonical.encode())
    digest.update(_secrets_digest(config))
    for match in sorted(statics):  # a changed fallback file is a new version
        digest.update(hashlib.sha256(statics[match]).digest())
    for match in sorted(contracts):  # so is a changed contract
        digest.update(contracts[match].model_dump_json().encode())
    return LoadedConfig(
        config=config, version=digest.hexdigest()[:12], source=source,
        static_fallbacks=statics, files=files, redaction_keys=keys, contracts=contracts,
        codecs=codecs, unit_redactor=unit_redactor,
    )


def parse_config_text(
    text: str | bytes, source: str = "", base_dir: Path | None = None
) -> LoadedConfig:
    """Parse and validate a YAML (or JSON) document; ConfigError for any bad input, never
    a decoding or recursion traceback (``sidecar validate``, serve and the admin API)."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ConfigError([("", f"not UTF-8 text (byte {exc.start} is "
                                    f"0x{text[exc.start]:02x})")], source) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([("", f"YAML syntax error at {where}{problem}")], source) from None
    except RecursionError:
        raise ConfigError([("", f"nested more than {MAX_DEPTH} levels deep")], source) from None
    return parse_config(data, source, base_dir)


def load_config(path: str | os.PathLike[str]) -> LoadedConfig:
    """Read and validate a YAML file; raise ConfigError naming the problem."""
    source = str(path)
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError([("", f"cannot read {source}: {exc.strerror or exc}")], source) from exc
    return parse_config_text(raw, source, base_dir=Path(path).resolve().parent)

"""The material a configuration names outside itself: files beside it (static fallbacks,
TLS certificates and keys, contracts, descriptor sets) and keys in the environment
(redaction). Each reader gives what it found and the problems, named by field path.
"""

from __future__ import annotations

import os
import ssl
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from sidecar.config.models import Config
from sidecar.errors import ConfigError
from sidecar.resilience.fallback import load_static_fallback

if TYPE_CHECKING:
    from sidecar.sink.redaction import Redactor

__all__ = [
    "contracts",
    "descriptor_codecs",
    "files",
    "redaction_keys",
    "static_fallbacks",
    "tls_material",
    "unit_redaction",
]


def static_fallbacks(config: Config, base: Path) -> tuple[dict[str, bytes], list[tuple[str, str]]]:
    found: dict[str, bytes] = {}
    problems: list[tuple[str, str]] = []
    for r, route in enumerate(config.routes):
        fb = route.fallback
        if fb is None or fb.static is None:
            continue
        path = base / fb.static  # an absolute path replaces base
        try:
            found[route.match] = load_static_fallback(path, route.codec)
        except ValueError as exc:
            problems.append((f"routes[{r}].fallback.static", str(exc)))
    return found, problems


def files(config: Config, base: Path) -> tuple[dict[str, bytes], list[tuple[str, str]]]:
    wanted: list[tuple[str, str | None]] = []
    for tls, where in ((config.tls, "tls"), (config.admin.tls, "admin.tls")):
        if tls is not None:
            wanted += [(f"{where}.cert", tls.cert), (f"{where}.key", tls.key)]
            wanted.append((f"{where}.client_ca", getattr(tls, "client_ca", None)))
    found: dict[str, bytes] = {}
    problems: list[tuple[str, str]] = []
    for i, b in enumerate(config.backends):
        if b.tls is not None:
            if (b.tls.cert is None) != (b.tls.key is None):
                problems.append((f"backends[{i}].tls.key",
                                 "give both cert and key for a client certificate"))
            wanted += [(f"backends[{i}].tls.{k}", getattr(b.tls, k)) for k in ("ca", "cert", "key")]
    paths: dict[str, Path] = {}
    for where, name in wanted:
        if name is None:
            continue
        path = base / name  # an absolute path replaces base
        try:
            found[where] = path.read_bytes()
            paths[where] = path
        except OSError as exc:
            problems.append((where, f"cannot read {path}: {exc.strerror or exc}"))
    problems += tls_material(paths, found)
    return found, problems


def tls_material(paths: dict[str, Path], found: dict[str, bytes]) -> list[tuple[str, str]]:
    """Readable TLS files that are not usable PEM (a certificate chain with its key, a CA):
    serve would fail on them when it sets up a listener or a channel."""
    problems: list[tuple[str, str]] = []
    for prefix in sorted({where.rsplit(".", 1)[0] for where in paths}):
        cert, key = paths.get(f"{prefix}.cert"), paths.get(f"{prefix}.key")
        if cert is not None and key is not None:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            try:  # an encrypted key fails too: neither grpc nor the admin can prompt
                ctx.load_cert_chain(cert, key, password=lambda: b"")
            except (ssl.SSLError, OSError, ValueError):
                problems.append((f"{prefix}.cert", f"not a PEM certificate chain whose "
                                 f"unencrypted private key is {prefix}.key"))
        for name in ("client_ca", "ca"):
            data = found.get(f"{prefix}.{name}")
            if data is None:
                continue
            try:
                ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(
                    cadata=data.decode("ascii"))
            except (ssl.SSLError, ValueError):  # UnicodeDecodeError is a ValueError
                problems.append((f"{prefix}.{name}", "not a PEM CA certificate"))
    return problems


def contracts(config: Config, base: Path) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    from sidecar.contracts import load_contract

    found: dict[str, Any] = {}
    problems: list[tuple[str, str]] = []
    for r, route in enumerate(config.routes):
        spec = route.contract
        if spec is None:
            continue
        where = f"routes[{r}].contract"
        if route.codec != "oip":
            problems.append((f"routes[{r}].codec", "a route with a contract needs codec: oip"))
            continue
        path = base / spec.file
        try:
            found[route.match] = load_contract(path)
        except ConfigError as exc:
            for sub, message in exc.problems:
                problems.append((f"{where}.{sub}" if sub else f"{where}.file", message))
    return found, problems


def descriptor_codecs(
    config: Config, base: Path
) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    from sidecar.codecs import CodecError
    from sidecar.codecs.descriptor import DescriptorCodec

    found: dict[str, Any] = {}
    problems: list[tuple[str, str]] = []
    for r, route in enumerate(config.routes):
        if not route.codec.startswith("descriptor:"):
            continue
        name = route.codec.removeprefix("descriptor:")
        path = base / name
        _, _, method = route.match.lstrip("/").partition("/")
        exact = route.match if method and method != "*" else None
        try:
            found[route.match] = DescriptorCodec(str(path), exact,
                                                 compare=route.compare_fields)
        except CodecError as exc:
            problems.append((f"routes[{r}].codec", str(exc)))
    return found, problems


def redaction_keys(config: Config) -> tuple[dict[str, bytes], list[tuple[str, str]]]:
    keys: dict[str, bytes] = {}
    problems: list[tuple[str, str]] = []
    for r, route in enumerate(config.routes):
        red = route.redact
        if red is None or red.mode != "hash":
            continue
        value = os.environ.get(red.key_env)
        if not value:
            problems.append((f"routes[{r}].redact.key_env",
                             f"environment variable {red.key_env} is not set"))
        else:
            keys[route.match] = value.encode()
    return keys, problems


def unit_redaction(
    config: Config, keys: dict[str, bytes]
) -> tuple[Redactor | None, list[tuple[str, str]]]:
    """The one redaction of outcome unit ids: outcomes name no route, so every route that
    redacts its unit must do it alike (mode and key) for outcomes to join their units."""
    from sidecar.sink.redaction import Redactor

    chosen: tuple[Literal["hash", "drop"], bytes | None] | None = None
    problems: list[tuple[str, str]] = []
    for r, route in enumerate(config.routes):
        red = route.redact
        if red is None or not red.unit:
            continue
        rule = (red.mode, keys.get(route.match) if red.mode == "hash" else None)
        if chosen is None:
            chosen = rule
        elif rule != chosen:
            problems.append((f"routes[{r}].redact", "routes that redact the unit must share "
                             "mode and key: outcome unit ids are redacted one way to join"))
    if chosen is None:
        return None, problems
    return Redactor(frozenset(), (), True, chosen[0], chosen[1]), problems

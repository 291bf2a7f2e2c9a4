"""The route's codec for replay and gold sets: ``oip``, ``raw``, ``descriptor:FILE`` or
``reflection``, built as the sidecar builds it, so replayed answers decode to the same fields.

A recorded config names a descriptor file as its author wrote it (relative to the config's
directory): it is looked for as given, then beside the recorded source. ``reflection`` asks
the target (the candidate) for its descriptors, as the sidecar asks its primary.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from sidecar.codecs import (
    DESCRIPTOR_PREFIX,
    REFLECTION,
    Codec,
    CodecError,
    codec_for,
    route_json_codec,
)
from sidecar.errors import ShadowcarError
from sidecar.exit_codes import EXIT_USAGE

__all__ = ["CODEC_HELP", "CodecUnavailable", "build_codec", "build_codecs", "check_spec",
           "resolve_descriptor"]

CODEC_HELP = ("how answers are decoded: oip | raw | reflection (asked of the target) | "
              "descriptor:FILE (default: the route's recorded codec)")


class CodecUnavailable(ShadowcarError):
    """The route's codec cannot be built: a missing descriptor file, no reflection (exit 2)."""

    exit_code = EXIT_USAGE


def check_spec(spec: str) -> str:
    """``spec`` when it names a codec (argparse type); ValueError otherwise."""
    if spec in ("oip", "raw", REFLECTION) or (
        spec.startswith(DESCRIPTOR_PREFIX) and len(spec) > len(DESCRIPTOR_PREFIX)
    ):
        return spec
    raise ValueError(f"{spec!r} is not oip, raw, reflection or descriptor:FILE")


def resolve_descriptor(spec: str, source: str | None) -> str:
    """The file ``descriptor:FILE`` names: as given, else beside ``source``."""
    name = spec.removeprefix(DESCRIPTOR_PREFIX)
    tried = [name]
    if not os.path.isabs(name) and source is not None:
        tried.append(os.path.join(os.path.dirname(os.path.abspath(source.rstrip("/"))), name))
    for path in tried:
        if os.path.isfile(path):
            return path
    raise CodecUnavailable(
        f"the route's codec {spec!r}: no file {' or '.join(repr(p) for p in tried)}; give "
        "--codec descriptor:PATH (the set protoc --include_imports wrote)")


async def build_codec(spec: str, *, route: str, target: str, source: str | None = None,
                      compare: Iterable[str] = (), timeout_s: float = 5.0) -> Codec:
    """The codec ``spec`` names for ``route``; CodecUnavailable says why it cannot be built."""
    check = spec if spec in ("oip", "raw") else None
    if check is not None:
        return codec_for(check)
    try:
        if spec == REFLECTION:
            return await route_json_codec(REFLECTION, match=route, primary_target=target,
                                          compare=tuple(compare), timeout=timeout_s)
        if spec.startswith(DESCRIPTOR_PREFIX):
            path = resolve_descriptor(spec, source)
            return await route_json_codec(DESCRIPTOR_PREFIX + path, match=route,
                                          primary_target=target, compare=tuple(compare))
    except CodecError as exc:
        hint = (" (the target answers no reflection: give --codec descriptor:FILE)"
                if spec == REFLECTION else "")
        raise CodecUnavailable(f"the route's codec {spec!r}: {exc}{hint}") from exc
    raise CodecUnavailable(f"unknown codec {spec!r} (oip, raw, reflection, descriptor:FILE)")


async def build_codecs(specs: Iterable[str], *, source: str | None, target: str, route: str,
                       timeout_s: float = 5.0) -> dict[str, Codec]:
    """Each distinct spec's codec (a reflection is asked once)."""
    return {spec: await build_codec(spec, route=route, target=target, source=source,
                                    timeout_s=timeout_s)
            for spec in sorted(set(specs))}

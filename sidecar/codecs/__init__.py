"""Codecs: turn recorded request and response bytes into tensors, off the caller's path.

A route names its codec in the configuration (``codec: oip | raw``); :func:`codec_for` maps
that name to an implementation of :class:`Codec`. Decoding failures raise :class:`CodecError`.
"""

from __future__ import annotations

from typing import Final, Protocol, runtime_checkable

from sidecar.codecs.descriptor import (
    DESCRIPTOR_PREFIX,
    DescriptorCodec,
    MethodCodec,
    json_tensors,
    read_descriptor_set,
)
from sidecar.codecs.fieldpath import extract, leaf_paths, parse_path, summarize_json
from sidecar.codecs.oip import (
    OutputSummary,
    decode_infer_request,
    decode_infer_response,
    summarize,
)
from sidecar.codecs.reflection import (
    REFLECTION,
    ReflectionError,
    load_reflection_descriptors,
    reflection_codec,
    route_json_codec,
)
from sidecar.codecs.tensor import DATATYPES, CodecError, Datatype, Tensor

__all__ = [
    "DATATYPES",
    "DESCRIPTOR_PREFIX",
    "REFLECTION",
    "Codec",
    "CodecError",
    "Datatype",
    "DescriptorCodec",
    "MethodCodec",
    "OipCodec",
    "OutputSummary",
    "RawCodec",
    "ReflectionError",
    "Tensor",
    "codec_for",
    "decode_infer_request",
    "decode_infer_response",
    "extract",
    "json_tensors",
    "leaf_paths",
    "load_reflection_descriptors",
    "parse_path",
    "read_descriptor_set",
    "reflection_codec",
    "route_json_codec",
    "summarize",
    "summarize_json",
]


@runtime_checkable
class Codec(Protocol):
    """Decodes one route's recorded messages; None means the codec does not decode."""

    def decode_request(self, data: bytes, max_bytes: int | None = None) -> list[Tensor] | None:
        """The request's input tensors, or None when this codec does not decode; tensors
        whose values would pass ``max_bytes`` decoded come back ``truncated``, without values."""
        ...

    def decode_response(self, data: bytes, max_bytes: int | None = None) -> list[Tensor] | None:
        """The response's output tensors, or None when this codec does not decode."""
        ...


class OipCodec:
    """Open Inference Protocol (KServe v2) ``ModelInferRequest`` / ``ModelInferResponse``."""

    __slots__ = ()

    def decode_request(self, data: bytes, max_bytes: int | None = None) -> list[Tensor] | None:
        """Input tensors of a serialized ``ModelInferRequest``; raises CodecError."""
        return decode_infer_request(data, max_bytes)

    def decode_response(self, data: bytes, max_bytes: int | None = None) -> list[Tensor] | None:
        """Output tensors of a serialized ``ModelInferResponse``; raises CodecError."""
        return decode_infer_response(data, max_bytes)

    def __repr__(self) -> str:
        return "OipCodec()"


class RawCodec:
    """Opaque bytes: records sizes and bytes only, decodes nothing."""

    __slots__ = ()

    def decode_request(self, data: bytes, max_bytes: int | None = None) -> list[Tensor] | None:
        """Always None: raw routes are not decoded."""
        return None

    def decode_response(self, data: bytes, max_bytes: int | None = None) -> list[Tensor] | None:
        """Always None: raw routes are not decoded."""
        return None

    def __repr__(self) -> str:
        return "RawCodec()"


_CODECS: Final[dict[str, Codec]] = {"oip": OipCodec(), "raw": RawCodec()}

#: The codec names a route may configure.


def codec_for(name: str) -> Codec:
    """The codec configured as ``name`` (``oip`` or ``raw``); ValueError names an unknown one."""
    try:
        return _CODECS[name]
    except KeyError:
        known = ", ".join(sorted(_CODECS))
        raise ValueError(f"unknown codec {name!r} (known: {known})") from None

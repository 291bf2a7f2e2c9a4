"""Unit keys: from request metadata, an Open Inference Protocol field, or the request id.

Only a route that names a field reads the request body, and then only that field.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sidecar.backends import Metadata
from sidecar.config.experiments import UnitSource

__all__ = ["UnitKey"]

MAX_UNIT_LEN = 256


def _oip_field(request: bytes, field: str) -> str | None:
    from google.protobuf.message import DecodeError

    from sidecar._proto import inference_pb2

    kind, _, name = field.partition(".")
    try:
        msg = inference_pb2.ModelInferRequest.FromString(request)
    except DecodeError:
        return None
    if kind == "parameters":
        if name not in msg.parameters:
            return None
        param = msg.parameters[name]
        which = param.WhichOneof("parameter_choice")
        if which is None:
            return None
        value = getattr(param, which)
        return value if isinstance(value, str) else str(value)
    for i, tensor in enumerate(msg.inputs):
        if tensor.name != name:
            continue
        if tensor.contents.bytes_contents:
            return tensor.contents.bytes_contents[0].decode("utf-8", "replace")
        if i < len(msg.raw_input_contents):
            raw = msg.raw_input_contents[i]
            if len(raw) >= 4:
                size = int.from_bytes(raw[:4], "little")
                return raw[4 : 4 + size].decode("utf-8", "replace")
        return None
    return None


@dataclass(frozen=True)
class UnitKey:
    """An ordered list of sources; the first that yields a value wins."""

    sources: tuple[UnitSource, ...]

    @classmethod
    def of(cls, spec: UnitSource | Sequence[UnitSource] | None) -> UnitKey:
        if spec is None:
            return cls((UnitSource(request_id=True),))
        if isinstance(spec, UnitSource):
            return cls((spec,))
        return cls(tuple(spec))

    def extract(self, metadata: Metadata, request: bytes, request_id: str) -> str | None:
        for source in self.sources:
            value: str | None = None
            if source.metadata is not None:
                key = source.metadata
                for k, v in metadata:
                    if k == key and isinstance(v, str) and v:
                        value = v
                        break
            elif source.field is not None:
                value = _oip_field(request, source.field)
            else:
                value = request_id
            if value:
                return value[:MAX_UNIT_LEN]
        return None

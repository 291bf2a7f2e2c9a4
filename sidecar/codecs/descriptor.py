"""Decode any gRPC method's messages from a FileDescriptorSet (``codec: descriptor:FILE``).

Messages become JSON dicts (proto field names, defaults included, safe int64 as numbers);
``compare_fields`` paths pick the values recorded as tensors and output/score/label.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol, runtime_checkable

from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory
from google.protobuf.message import DecodeError, Message

from sidecar.codecs.fieldpath import extract, parse_path
from sidecar.codecs.tensor import BYTES_DATATYPE, CodecError, Tensor

__all__ = [
    "DESCRIPTOR_PREFIX",
    "DescriptorCodec",
    "MethodCodec",
    "json_tensors",
    "read_descriptor_set",
]

#: ``codec: descriptor:<file>`` names a descriptor set file (protoc --descriptor_set_out).
DESCRIPTOR_PREFIX: Final = "descriptor:"

# protobuf >= 6.31 can print int64 values below 2**53 as JSON numbers instead of strings;
# older runtimes (the project allows >= 5.29) keep them quoted.
_JSON_OPTIONS: Final[dict[str, Any]] = (
    {"unquote_int64_if_possible": True}
    if "unquote_int64_if_possible" in inspect.signature(json_format.MessageToDict).parameters
    else {}
)


@runtime_checkable
class MethodCodec(Protocol):
    """A codec that decodes the messages of any of several methods to JSON dicts.

    The sink checks ``isinstance(codec, MethodCodec)`` and passes the call's full method,
    since one route (``/pkg.Svc/*``) may cover several message types.
    """

    def decode_request_json(self, method: str, data: bytes) -> dict[str, Any] | None:
        """The request message of ``method`` as a JSON dict; raises CodecError."""
        ...

    def decode_response_json(self, method: str, data: bytes) -> dict[str, Any] | None:
        """The response message of ``method`` as a JSON dict; raises CodecError."""
        ...


@dataclass(frozen=True, slots=True)
class _Method:
    request: type[Message]
    response: type[Message]
    streaming: bool


def read_descriptor_set(path: str | os.PathLike[str]) -> descriptor_pb2.FileDescriptorSet:
    """Read a serialized FileDescriptorSet; CodecError names a missing or malformed file."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        raise CodecError(f"cannot read descriptor set {os.fspath(path)!r}: {exc}") from exc
    file_set = descriptor_pb2.FileDescriptorSet()
    try:
        file_set.ParseFromString(data)
    except (DecodeError, ValueError) as exc:
        raise CodecError(f"{os.fspath(path)!r} is not a FileDescriptorSet: {exc}") from exc
    if not file_set.file:
        raise CodecError(f"{os.fspath(path)!r} holds no proto files")
    return file_set


def _ordered(files: Sequence[descriptor_pb2.FileDescriptorProto]) -> list[bytes]:
    """Serialized files with every dependency before its dependants (a pool needs that)."""
    by_name = {f.name: f for f in files}
    done: set[str] = set()
    order: list[bytes] = []
    visiting: set[str] = set()

    def visit(name: str, wanted_by: str) -> None:
        if name in done:
            return
        if name not in by_name:
            raise CodecError(
                f"{wanted_by!r} imports {name!r}, which the descriptor set lacks "
                "(build it with protoc --include_imports)"
            )
        if name in visiting:
            raise CodecError(f"import cycle through {name!r}")
        visiting.add(name)
        for dep in by_name[name].dependency:
            visit(dep, name)
        visiting.discard(name)
        done.add(name)
        order.append(by_name[name].SerializeToString())

    for f in files:
        visit(f.name, f.name)
    return order


def _method_key(method: str) -> str:
    """``/pkg.Svc/Method`` from that form or ``pkg.Svc/Method``."""
    text = method.strip()
    if not text.startswith("/"):
        text = "/" + text
    if text.count("/") != 2 or text.endswith("/") or text.startswith("//"):
        raise CodecError(f"method {method!r} is not '/package.Service/Method'")
    return text


def json_tensors(doc: Mapping[str, Any], compare: Sequence[str]) -> list[Tensor]:
    """One flat tensor per ``compare`` path that has values, named by the path.

    All-number values become FP64 ``data``; anything else BYTES ``text`` (booleans as
    ``true``/``false``).
    """
    tensors: list[Tensor] = []
    for path in compare:
        values = extract(doc, path)
        if not values:
            continue
        if all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
            tensors.append(Tensor(path, "FP64", (len(values),), [float(v) for v in values], None))
        else:
            text = [("true" if v else "false") if isinstance(v, bool) else str(v) for v in values]
            tensors.append(Tensor(path, BYTES_DATATYPE, (len(values),), None, text))
    return tensors


class DescriptorCodec:
    """Decodes the request and response messages of the methods in a FileDescriptorSet.

    ``descriptor_set`` is a file written by ``protoc --descriptor_set_out=F --include_imports``
    or an already loaded set (from server reflection). ``method`` is the method the plain
    :class:`~sidecar.codecs.Codec` entries decode; a route over several methods uses the
    method-aware ``decode_*_json`` entries instead. ``compare`` paths choose the values the
    plain entries return as tensors (none: they return None). Each codec has its own
    descriptor pool, so its types never clash with the process's generated modules.
    """

    __slots__ = ("_compare", "_method", "_methods", "_pool", "_source")

    def __init__(
        self,
        descriptor_set: str | os.PathLike[str] | descriptor_pb2.FileDescriptorSet,
        method: str | None = None,
        *,
        compare: Sequence[str] = (),
    ) -> None:
        if isinstance(descriptor_set, descriptor_pb2.FileDescriptorSet):
            file_set, self._source = descriptor_set, "<descriptor set>"
        else:
            file_set, self._source = read_descriptor_set(descriptor_set), os.fspath(descriptor_set)
        self._pool = descriptor_pool.DescriptorPool()
        ordered = _ordered(file_set.file)
        try:
            for serialized in ordered:
                self._pool.AddSerializedFile(serialized)
        except Exception as exc:  # the pool raises TypeError or others on bad files
            raise CodecError(f"{self._source}: cannot build descriptors: {exc}") from exc
        self._methods = self._index(file_set)
        self._compare = tuple(compare)
        for path in self._compare:
            parse_path(path)
        self._method = None if method is None else self._lookup(method)[0]

    def _index(self, file_set: descriptor_pb2.FileDescriptorSet) -> dict[str, _Method]:
        methods: dict[str, _Method] = {}
        for file_proto in file_set.file:
            prefix = f"{file_proto.package}." if file_proto.package else ""
            for service_proto in file_proto.service:
                service = self._pool.FindServiceByName(prefix + service_proto.name)
                for m in service.methods:
                    methods[f"/{service.full_name}/{m.name}"] = _Method(
                        message_factory.GetMessageClass(m.input_type),
                        message_factory.GetMessageClass(m.output_type),
                        bool(m.client_streaming or m.server_streaming),
                    )
        return methods

    @property
    def methods(self) -> tuple[str, ...]:
        """Every method the set defines, as ``/package.Service/Method``, sorted."""
        return tuple(sorted(self._methods))

    @property
    def method(self) -> str | None:
        """The method the plain Codec entries decode, if one was given."""
        return self._method

    @property
    def compare(self) -> tuple[str, ...]:
        """The field paths recorded as tensors and output/score/label."""
        return self._compare

    def _lookup(self, method: str) -> tuple[str, _Method]:
        key = _method_key(method)
        found = self._methods.get(key)
        if found is None:
            known = ", ".join(self.methods[:10]) or "none"
            raise CodecError(f"method {key!r} is not in {self._source} (methods: {known})")
        return key, found

    def _decode(self, cls: type[Message], data: bytes, what: str) -> dict[str, Any]:
        message = cls()
        try:
            message.ParseFromString(data)
            doc: dict[str, Any] = json_format.MessageToDict(
                message,
                always_print_fields_with_no_presence=True,
                preserving_proto_field_name=True,
                descriptor_pool=self._pool,
                **_JSON_OPTIONS,
            )
        except Exception as exc:  # DecodeError, or what a protobuf backend raises instead
            raise CodecError(f"not a {what}: {type(exc).__name__}: {exc}") from exc
        return doc

    def decode_request_json(self, method: str, data: bytes) -> dict[str, Any]:
        """The request message of ``method`` as a JSON dict; raises CodecError."""
        _, found = self._lookup(method)
        return self._decode(found.request, data, found.request.DESCRIPTOR.full_name)

    def decode_response_json(self, method: str, data: bytes) -> dict[str, Any]:
        """The response message of ``method`` as a JSON dict; raises CodecError."""
        _, found = self._lookup(method)
        return self._decode(found.response, data, found.response.DESCRIPTOR.full_name)

    def decode_request(self, data: bytes, max_bytes: int | None = None) -> list[Tensor] | None:
        """The compare paths of the request as tensors; None without a method or paths (a
        few values each: ``max_bytes`` binds the recorded JSON, in the sink's writer)."""
        if self._method is None or not self._compare:
            return None
        return json_tensors(self.decode_request_json(self._method, data), self._compare)

    def decode_response(self, data: bytes, max_bytes: int | None = None) -> list[Tensor] | None:
        """The compare paths of the response as tensors; None without a method or paths (a
        few values each: ``max_bytes`` binds the recorded JSON, in the sink's writer)."""
        if self._method is None or not self._compare:
            return None
        return json_tensors(self.decode_response_json(self._method, data), self._compare)

    def is_streaming(self, method: str) -> bool:
        """Whether ``method`` streams in either direction (each message decodes alone)."""
        return self._lookup(method)[1].streaming

    def __repr__(self) -> str:
        return (
            f"DescriptorCodec({self._source!r}, method={self._method!r}, "
            f"compare={list(self._compare)!r}, methods={len(self._methods)})"
        )

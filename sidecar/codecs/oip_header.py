"""The model name and version of Open Inference Protocol messages, read and rewritten in the
bytes, without decoding a tensor.

``ModelInferRequest`` (and the model-addressed requests and responses of the protocol:
``ModelReadyRequest``, ``ModelMetadataRequest``, ``ModelMetadataResponse``,
``ModelInferResponse``) carry the model's name in field 1 and its version in field 2, both
proto3 strings. These functions walk the message's top-level fields only: a length-delimited
field (an input tensor, ``raw_input_contents``) is skipped by its length, never parsed, so the
cost grows with the number of top-level fields, not with the size of the tensors.

Protobuf's rules hold: fields may come in any order, a repeated scalar's last occurrence
wins, unknown fields are kept. A rewrite removes every occurrence of the fields it sets,
puts one of each in front, and copies every other byte as it came; a rewrite that changes
nothing returns the very same object. Malformed bytes raise :class:`CodecError`.
"""

from __future__ import annotations

from dataclasses import dataclass

from sidecar.codecs.tensor import CodecError

__all__ = ["ModelRef", "ModelRewrite", "read_model", "rewrite_model"]

_VARINT, _FIXED64, _LEN, _START_GROUP, _END_GROUP, _FIXED32 = 0, 1, 2, 3, 4, 5
#: Nested groups skipped at most (groups are proto2 and long deprecated; no OIP client sends them).
_MAX_GROUP_DEPTH = 32


@dataclass(frozen=True, slots=True)
class ModelRef:
    """A message's model name and version ("" when absent, as proto3 reads them)."""

    name: str
    version: str


def _varint(data: bytes, pos: int, end: int) -> tuple[int, int]:
    """The varint at ``pos`` and the position after it."""
    result = shift = 0
    while pos < end:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift >= 70:
            raise CodecError("malformed protobuf: varint longer than 10 bytes")
    raise CodecError("malformed protobuf: truncated varint")


def _skip(data: bytes, pos: int, end: int, wire: int, number: int, depth: int = 0) -> int:
    """The position after a field's value (``pos`` is just after its tag)."""
    if wire == _VARINT:
        return _varint(data, pos, end)[1]
    if wire == _LEN:
        length, pos = _varint(data, pos, end)
        after = pos + length
        if after > end:
            raise CodecError("malformed protobuf: length past the end of the message")
        return after
    if wire == _FIXED64:
        after = pos + 8
    elif wire == _FIXED32:
        after = pos + 4
    elif wire == _START_GROUP:
        if depth >= _MAX_GROUP_DEPTH:
            raise CodecError("malformed protobuf: groups nested too deep")
        while True:
            tag, pos = _varint(data, pos, end)
            if tag & 7 == _END_GROUP:
                if tag >> 3 != number:
                    raise CodecError("malformed protobuf: mismatched end of group")
                return pos
            pos = _skip(data, pos, end, tag & 7, tag >> 3, depth + 1)
    else:
        raise CodecError(f"malformed protobuf: wire type {wire}")
    if after > end:
        raise CodecError("malformed protobuf: truncated fixed-size field")
    return after


def _scan(
    data: bytes, strict_version: bool = True
) -> tuple[list[tuple[int, int, int, int, int]], int]:
    """Spans of fields 1 and 2: (number, start, value_start, value_end, end), in order, and
    the number of top-level fields walked. Fields 1 and 2 must be length-delimited (field 2
    may be anything when not ``strict_version``: a response's field 2 is not always one)."""
    spans: list[tuple[int, int, int, int, int]] = []
    pos, end, walked = 0, len(data), 0
    while pos < end:
        start = pos
        tag = data[pos]
        if tag < 0x80:  # fields 1-15 have one-byte tags: the common case, inlined
            pos += 1
        else:
            tag, pos = _varint(data, pos, end)
        number, wire = tag >> 3, tag & 7
        walked += 1
        if wire == _LEN:
            if pos < end and data[pos] < 0x80:
                length, value = data[pos], pos + 1
            else:
                length, value = _varint(data, pos, end)
            pos = value + length
            if pos > end:
                raise CodecError("malformed protobuf: length past the end of the message")
            if number == 1 or number == 2:
                spans.append((number, start, value, pos, pos))
            elif number == 0:
                raise CodecError("malformed protobuf: field number 0")
        elif number == 0:
            raise CodecError("malformed protobuf: field number 0")
        elif number == 1 or (number == 2 and strict_version):
            raise CodecError(f"malformed protobuf: field {number} is not a string")
        elif wire == _END_GROUP:
            raise CodecError("malformed protobuf: end of a group never started")
        else:
            pos = _skip(data, pos, end, wire, number)
    return spans, walked


def _text(data: bytes, start: int, end: int) -> str:
    try:
        return data[start:end].decode("utf-8")
    except UnicodeDecodeError:
        raise CodecError("malformed protobuf: a model name or version is not UTF-8") from None


def _ref(data: bytes, spans: list[tuple[int, int, int, int, int]]) -> ModelRef:
    name = version = ""
    for number, _, value, value_end, _ in spans:  # the last occurrence wins
        if number == 1:
            name = _text(data, value, value_end)
        else:
            version = _text(data, value, value_end)
    return ModelRef(name, version)


def read_model(data: bytes) -> ModelRef:
    """The model name (field 1) and version (field 2) of a serialized OIP message."""
    return _ref(data, _scan(data)[0])


def _field(number: int, value: str) -> bytes:
    if not value:  # proto3: an empty string is the default and is not written
        return b""
    raw = value.encode("utf-8")
    return _len_tag(number, len(raw)) + raw


def _len_tag(number: int, length: int) -> bytes:
    """The tag and length of a length-delimited field."""
    out = bytearray((number << 3 | _LEN,))
    while length > 0x7F:
        out.append(length & 0x7F | 0x80)
        length >>= 7
    out.append(length)
    return bytes(out)


def rewrite_model(data: bytes, name: str, version: str) -> bytes:
    """``data`` with model name ``name`` and version ``version`` ("" removes the field);
    every other byte is copied as it came. Unchanged (same object) when already so."""
    spans, _ = _scan(data)
    if _ref(data, spans) == ModelRef(name, version):
        return data
    return _rewritten(data, spans, name, version)


def _rewritten(data: bytes, spans: list[tuple[int, int, int, int, int]], name: str,
               version: str | None) -> bytes:
    """``spans`` removed, the new fields in front (``version`` None: field 2 left alone;
    then ``spans`` must hold field 1's only)."""
    parts: list[bytes | memoryview] = [_field(1, name)]
    if version is not None:
        parts.append(_field(2, version))
    view = memoryview(data)  # slices of a view are not copies: the join copies once
    pos = 0
    for _, start, _, _, end in spans:
        if start > pos:
            parts.append(view[pos:start])
        pos = end
    parts.append(view[pos:])
    return b"".join(parts)


@dataclass(frozen=True, slots=True)
class ModelRewrite:
    """What one backend is asked for: its own model name, and its version if set.

    With ``version`` unset, a caller's version goes along while the name stays the caller's;
    a renamed model gets none (the server's own policy picks), since the caller's version
    numbers another model.
    """

    #: The model name sent; None keeps the caller's (only the version is set).
    name: str | None
    version: str | None = None

    @classmethod
    def of(cls, name: str | None, version: str | None) -> ModelRewrite | None:
        """The rewrite of a backend's ``model`` and ``model_version``; None when both unset."""
        return None if name is None and version is None else cls(name, version)

    def apply(self, data: bytes) -> bytes:
        """``data`` addressed to this model; the same object when it already is."""
        spans, _ = _scan(data)
        current = _ref(data, spans)
        name = current.name if self.name is None else self.name
        if self.version is not None:
            version = self.version
        else:
            version = current.version if current.name == name else ""
        if current == ModelRef(name, version):
            return data
        return _rewritten(data, spans, name, version)

    def restore(self, data: bytes, asked: ModelRef) -> bytes:
        """A response of this model renamed back to the model the caller ``asked`` for
        (field 1 only: the versions the backend reports stay, they are the backend's)."""
        if self.name is None or self.name == asked.name:
            return data
        spans, _ = _scan(data, strict_version=False)
        current = _ref(data, [s for s in spans if s[0] == 1])
        if current.name != self.name:
            return data  # a response naming another model is the backend's word: kept
        return _rewritten(data, [s for s in spans if s[0] == 1], asked.name, None)

    def restore_streamed(self, data: bytes, asked: ModelRef) -> bytes:
        """A ``ModelStreamInferResponse`` (``error_message`` = 1, ``infer_response`` = 2)
        whose inner response of this model is renamed back to the model the caller
        ``asked`` for, as :meth:`restore` does for ``ModelInfer``; the same object when
        nothing changes."""
        if self.name is None or self.name == asked.name:
            return data
        spans, _ = _scan(data)
        view = memoryview(data)
        parts: list[bytes | memoryview] = []
        pos = 0
        for number, start, value, value_end, end in spans:
            if number != 2:
                continue
            inner = data[value:value_end]
            renamed = self.restore(inner, asked)
            if renamed is inner:
                continue
            parts += [view[pos:start], _len_tag(2, len(renamed)), renamed]
            pos = end
        if not parts:
            return data
        parts.append(view[pos:])
        return b"".join(parts)

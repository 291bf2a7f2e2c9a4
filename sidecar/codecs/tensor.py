"""The decoded tensor the sink records, the datatype vocabulary, and the codec error.

A :class:`Tensor` is what every codec produces and what ``sidecar/sink/schema.py`` stores as
``TENSOR_TYPE``: numbers as doubles in ``data``, BYTES as text in ``text``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final, Literal, TypeAlias, get_args

import numpy as np

__all__ = [
    "BYTES_DATATYPE",
    "DATATYPES",
    "NUMERIC_DTYPES",
    "CodecError",
    "Datatype",
    "Tensor",
]


class CodecError(ValueError):
    """Recorded bytes could not be decoded (malformed message, datatype, shape or contents)."""


#: The Open Inference Protocol tensor datatypes.
Datatype: TypeAlias = Literal[
    "BOOL",
    "UINT8",
    "UINT16",
    "UINT32",
    "UINT64",
    "INT8",
    "INT16",
    "INT32",
    "INT64",
    "FP16",
    "BF16",
    "FP32",
    "FP64",
    "BYTES",
]

DATATYPES: Final[frozenset[str]] = frozenset(get_args(Datatype))

BYTES_DATATYPE: Final = "BYTES"

#: Little-endian numpy dtype of one raw element for each numeric datatype. BF16 has no numpy
#: dtype: its raw elements are read as ``<u2`` and widened to FP32 by the decoder.
NUMERIC_DTYPES: Final[dict[str, np.dtype[np.generic]]] = {
    "BOOL": np.dtype("|u1"),
    "UINT8": np.dtype("|u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("|i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}


@dataclass(frozen=True, slots=True)
class Tensor:
    """One decoded tensor, flattened in row-major order.

    Numeric datatypes fill ``data`` (BOOL as 0.0/1.0) and leave ``text`` None; BYTES fills
    ``text`` (UTF-8, undecodable bytes replaced) and leaves ``data`` None. A ``truncated``
    tensor is a summary of one too big to record: name, datatype and shape, no values.
    """

    name: str
    datatype: str
    shape: tuple[int, ...]
    data: list[float] | None
    text: list[str] | None
    truncated: bool = False

    @property
    def size(self) -> int:
        """Number of elements the shape describes (1 for a scalar shape ``()``)."""
        count = 1
        for dim in self.shape:
            count *= dim
        return count

    def as_row(self) -> dict[str, Any]:
        """This tensor as a dict matching ``sidecar.sink.schema.TENSOR_TYPE``.

        Keys: name (str), datatype (str), shape (list[int]), data (list[float] | None),
        text (list[str] | None).
        """
        return {
            "name": self.name,
            "datatype": self.datatype,
            "shape": list(self.shape),
            "data": None if self.data is None else list(self.data),
            "text": None if self.text is None else list(self.text),
        }

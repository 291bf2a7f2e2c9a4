"""Redaction before recording: named inputs, the unit id and JSON fields are dropped or
replaced by a keyed hash (HMAC-SHA256, hex, first 32 characters), in the writer thread.

A keyed hash keeps equal values equal (units stay countable, categories comparable) while
the value itself cannot be recovered without the key. Texts derived from the request are
redacted too: contract violations lose the values they quote, and a call's error text on a
redacted route (a backend may echo the request in it) is replaced by its keyed hash.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["Redactor", "shown_error"]


@dataclass(frozen=True)
class Redactor:
    """One route's redaction rules and key."""

    inputs: frozenset[str]
    fields: tuple[str, ...]
    unit: bool
    mode: Literal["hash", "drop"]
    key: bytes | None

    def value(self, text: str | None) -> str | None:
        if text is None or self.mode == "drop" or self.key is None:
            return None
        return hmac.new(self.key, text.encode(), hashlib.sha256).hexdigest()[:32]

    def tensor(self, row: dict[str, Any]) -> dict[str, Any] | None:
        """A decoded tensor row, redacted; None when it is dropped."""
        if row["name"] not in self.inputs:
            return row
        if self.mode == "drop":
            return None
        text = row.get("text")
        data = row.get("data")
        hashed: list[str] = []
        if text is not None:
            hashed = [self.value(t) or "" for t in text]
        elif data is not None:
            hashed = [self.value(struct.pack("<d", float(x)).hex()) or "" for x in data]
        return {**row, "data": None, "text": hashed}

    def json(self, doc: dict[str, Any]) -> dict[str, Any]:
        """A decoded JSON message with the configured field paths hashed or dropped."""
        from sidecar.codecs.fieldpath import redact_paths

        replace = None if self.mode == "drop" else (lambda v: self.value(str(v)))
        result: dict[str, Any] = redact_paths(doc, self.fields, replace)
        return result

    def violations(self, found: Sequence[Any] | None) -> Sequence[Any] | None:
        """Contract violations with the values of redacted inputs withheld."""
        if not found or not self.inputs:
            return found
        from sidecar.contracts import hide_values

        return hide_values(found, self.inputs)

    def error(self, text: str | None) -> str | None:
        """A call's error text as recorded: the backend may quote redacted request content
        in it, so only a keyed hash (equal errors stay equal) or nothing is kept."""
        if text is None:
            return None
        hashed = self.value(text)
        return "redacted" if hashed is None else f"redacted:{hashed}"

    def tensors(self, rows: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
        if rows is None:
            return None
        out = [self.tensor(r) for r in rows]
        return [r for r in out if r is not None]


def shown_error(redactor: Redactor | None, text: str | None) -> str | None:
    """A call's error text as it may leave the process (span status, the breaker's log line
    and snapshot) on a route with ``redactor``: its recorded form; unchanged without one."""
    return text if redactor is None or text is None else redactor.error(text)

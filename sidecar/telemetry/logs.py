"""Structured logs: text or JSON lines, each carrying the current request_id and trace_id.

The forwarding core sets :data:`current_request` per call (a context variable, so each
gRPC call's task sees its own); the formatters read it.
"""

from __future__ import annotations

import json
import logging
import time
from contextvars import ContextVar
from typing import Literal

__all__ = ["JsonFormatter", "TextFormatter", "configure_logging", "current_request"]

#: (request_id, trace_id) of the call being served, if any.
current_request: ContextVar[tuple[str, str | None] | None] = ContextVar(
    "shadowcar_request", default=None
)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message, request_id, trace_id."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        req = current_request.get()
        if req is not None:
            data["request_id"], data["trace_id"] = req
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return json.dumps(data, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """Plain text; request and trace ids appended when a call is being served."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        req = current_request.get()
        if req is not None:
            line += f" request_id={req[0]}" + (f" trace_id={req[1]}" if req[1] else "")
        return line


def configure_logging(level: str = "INFO", fmt: Literal["text", "json"] = "text") -> None:
    """Install one stderr handler on the root logger with the chosen format."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper(), logging.INFO))

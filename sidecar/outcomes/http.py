"""The HTTP transport of outcome ingestion: ``POST /v1/outcomes`` over :class:`OutcomeIngest`.

The admin server mounts the handler behind its own token check; this module does no auth.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from sidecar.outcomes.ingest import BatchTooLarge, OutcomeIngest

__all__ = ["MAX_BODY_BYTES", "handle_post_outcomes"]

#: Largest request body accepted; a larger one is answered 413 without being parsed.
MAX_BODY_BYTES = 8 * 1024 * 1024

_BODY_HINT = 'the body must be a JSON object {"events": [...]}'


class _BodyTooLarge(Exception):
    pass


def _error(status: int, reason: str) -> web.Response:
    return web.json_response({"error": reason}, status=status)


async def _read_body(request: web.Request, limit: int) -> bytes:
    """The body, read from the stream so that ``limit`` (not the app's) is the cap."""
    declared = request.content_length
    if declared is not None and declared > limit:
        raise _BodyTooLarge
    chunks: list[bytes] = []
    size = 0
    while chunk := await request.content.readany():
        size += len(chunk)
        if size > limit:  # chunked bodies declare no length
            raise _BodyTooLarge
        chunks.append(chunk)
    return b"".join(chunks)


def _parse(body: bytes) -> Any:
    """The JSON document in ``body``; ValueError with a readable reason otherwise."""
    if not body.strip():
        raise ValueError(f"empty body: {_BODY_HINT}")
    try:
        return json.loads(body)
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno} column {exc.colno}"
        raise ValueError(f"malformed JSON at {where}: {exc.msg}") from exc
    except UnicodeDecodeError as exc:
        raise ValueError("malformed JSON: the body is not UTF-8 text") from exc
    except RecursionError as exc:
        raise ValueError("malformed JSON: nested too deeply") from exc
    except ValueError as exc:  # e.g. an integer literal beyond Python's digit limit
        raise ValueError(f"malformed JSON: {exc}") from exc


async def handle_post_outcomes(
    request: web.Request, ingest: OutcomeIngest, *, max_body_bytes: int = MAX_BODY_BYTES
) -> web.Response:
    """Ingest ``{"events": [...]}``.

    200 with the result (``accepted``, ``duplicates``, ``rejected``, ``dropped``); 400 with
    the same result when every event was rejected; 400 ``{"error": ...}`` for a body that is
    not such an object; 413 ``{"error": ...}`` for a body or batch over the limits.
    """
    try:
        body = await _read_body(request, max_body_bytes)
    except _BodyTooLarge:
        return _error(413, f"request body larger than {max_body_bytes} bytes")
    try:
        document = _parse(body)
    except ValueError as exc:
        return _error(400, str(exc))
    if not isinstance(document, dict):
        return _error(400, _BODY_HINT)
    if "events" not in document:
        return _error(400, f"events: required; {_BODY_HINT}")
    events = document["events"]
    if not isinstance(events, list):
        return _error(400, "events: must be a list of event objects")
    extra = sorted(key[:64] for key in document if key != "events")
    if extra:
        return _error(400, f"{', '.join(extra[:5])}: unknown field; {_BODY_HINT}")
    try:
        result = ingest.ingest(events)
    except BatchTooLarge as exc:
        return _error(413, str(exc))
    return web.json_response(result.to_dict(), status=400 if result.all_rejected else 200)

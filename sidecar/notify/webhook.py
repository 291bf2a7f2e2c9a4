"""Webhook notifications: hold, rollback, gate and trigger events POSTed as JSON, off the hot path.

One owned background task delivers a bounded queue; a full queue drops and counts, a failed POST
is retried with exponential backoff, and ``aclose()`` drains until a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Literal, Self, TypeAlias, get_args

import aiohttp
import yarl

from sidecar.config.security import mask_url

if TYPE_CHECKING:
    from sidecar.config.models import NotifyConfig

__all__ = ["EVENT_KINDS", "EventKind", "WebhookNotifier", "WebhookStats"]

#: The events a webhook receives.
EventKind: TypeAlias = Literal["hold", "rollback", "gate", "trigger"]
EVENT_KINDS: Final[frozenset[str]] = frozenset(get_args(EventKind))

_log = logging.getLogger(__name__)
_WARN_EVERY_S: Final = 60.0  # at most one warning a minute per notifier


@dataclass
class WebhookStats:
    """Counters of one notifier since it started."""

    sent: int = 0
    failed: int = 0
    dropped: int = 0
    retries: int = 0
    abandoned: int = 0


class _Retryable(Exception):
    """A delivery attempt failed in a way another attempt may fix."""


class WebhookNotifier:
    """POSTs events to ``url``; use as ``async with WebhookNotifier(url) as notifier``.

    ``retries`` is the number of further attempts after a failed first one; attempt ``k``
    waits ``backoff_s * 2**k`` before it. 5xx, 429, timeouts and connection errors are retried,
    other 4xx answers are not. ``drain_timeout_s`` bounds how long ``aclose()`` delivers the
    queued events; those left are counted as abandoned.
    """

    @classmethod
    def from_config(cls, settings: NotifyConfig) -> WebhookNotifier:
        """The notifier a config's ``notify`` block describes (its ``webhook`` must be set)."""
        assert settings.webhook is not None
        return cls(settings.webhook, timeout_s=settings.timeout_s, retries=settings.retries,
                   backoff_s=settings.backoff_s, queue_size=settings.queue_size)

    def __init__(self, url: str, *, timeout_s: float = 5.0, retries: int = 3,
                 backoff_s: float = 0.5, queue_size: int = 1000,
                 drain_timeout_s: float = 5.0) -> None:
        if timeout_s <= 0 or retries < 0 or backoff_s < 0 or queue_size < 1:
            raise ValueError("timeout_s > 0, retries >= 0, backoff_s >= 0, queue_size >= 1")
        self.url = url
        #: What logs show instead of ``url``, which may carry credentials.
        self.shown_url = mask_url(url)
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._retries = retries
        self._backoff_s = backoff_s
        self._drain_timeout_s = drain_timeout_s
        self._queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=queue_size)
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._closed = asyncio.Event()
        self._last_warning = -_WARN_EVERY_S
        self.stats = WebhookStats()

    async def __aenter__(self) -> Self:
        self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.aclose()

    def start(self) -> None:
        """Open the HTTP session and start the delivery task (inside a running loop)."""
        if self._task is not None or self._closing:
            raise RuntimeError("a WebhookNotifier starts once")
        self._session = aiohttp.ClientSession(timeout=self._timeout)
        self._task = asyncio.create_task(self._deliver_forever(), name="webhook-notifier")

    def notify(self, event: dict[str, Any]) -> bool:
        """Queue ``event`` without waiting; False when closed or the queue is full (counted)."""
        if event.get("kind") not in EVENT_KINDS:
            raise ValueError(f"event kind must be one of {sorted(EVENT_KINDS)}")
        if self._closing:
            self.stats.dropped += 1
            return False
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            self.stats.dropped += 1
            self._warn("webhook queue full: event dropped (%d so far)", self.stats.dropped)
            return False
        return True

    async def aclose(self) -> None:
        """Stop accepting, deliver what is queued until the deadline, then stop. Idempotent."""
        if self._closing:
            await self._closed.wait()
            return
        self._closing = True
        try:
            if self._task is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._queue.join(), self._drain_timeout_s)
                self.stats.abandoned += self._queue.qsize()
                await self._stop_task()
            if self._session is not None:
                await self._session.close()
        finally:
            self._closed.set()

    async def _stop_task(self) -> None:
        task = self._task
        if task is None or task.done():
            return
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise  # the cancellation was aimed at whoever is closing us: pass it on

    async def _deliver_forever(self) -> None:
        while True:
            event = await self._queue.get()
            try:
                await self._deliver(event)
            finally:
                self._queue.task_done()

    async def _deliver(self, event: dict[str, Any]) -> None:
        reason = ""
        for attempt in range(self._retries + 1):
            if attempt:
                self.stats.retries += 1
                await asyncio.sleep(self._backoff_s * 2 ** (attempt - 1))
            try:
                delivered = await self._post(event)
            except _Retryable as exc:
                reason = str(exc)
                continue
            if delivered:
                self.stats.sent += 1
                return
            reason = "refused by the receiver"
            break  # a client error that another attempt would repeat
        self.stats.failed += 1
        self._warn("webhook %s: %s event not delivered: %s", self.shown_url, event.get("kind"),
                   self._scrub(reason))

    async def _post(self, event: dict[str, Any]) -> bool:
        """True when delivered, False when refused for good; raises _Retryable otherwise."""
        assert self._session is not None
        try:
            async with self._session.post(self.url, json=event) as response:
                await response.read()
                if response.status < 300:
                    return True
                if response.status >= 500 or response.status == 429:
                    raise _Retryable(f"HTTP {response.status}")
                return False
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _Retryable(f"{type(exc).__name__}: {exc}") from exc

    def _scrub(self, text: str) -> str:
        """``text`` (an aiohttp error may quote the URL) with the URL's secrets masked."""
        try:
            parsed = yarl.URL(self.url)
            pieces = [self.url, str(parsed), parsed.raw_user or "", parsed.raw_password or "",
                      parsed.raw_query_string, parsed.raw_path.strip("/")]
        except (ValueError, TypeError):
            pieces = [self.url]
        for piece in sorted({p for p in pieces if len(p) >= 3}, key=len, reverse=True):
            text = text.replace(piece, self.shown_url if piece == self.url else "***")
        return text

    def _warn(self, message: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._last_warning >= _WARN_EVERY_S:
            self._last_warning = now
            _log.warning(message, *args)

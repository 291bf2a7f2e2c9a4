"""The webhook notifier against real aiohttp servers on loopback ports."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web

from sidecar.notify import WebhookNotifier

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Receiver:
    """A webhook receiver: records JSON bodies; ``fail_first`` answers 503 that many times."""

    def __init__(self, fail_first: int = 0, status: int = 200) -> None:
        self.fail_first = fail_first
        self.status = status
        self.attempts = 0
        self.events: list[dict[str, Any]] = []
        self.release = asyncio.Event()

    async def accept(self, request: web.Request) -> web.Response:
        self.attempts += 1
        if self.attempts <= self.fail_first:
            return web.Response(status=503)
        self.events.append(await request.json())
        return web.Response(status=self.status)

    async def hang(self, request: web.Request) -> web.Response:
        self.attempts += 1
        await self.release.wait()
        return web.Response(status=200)


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Handler, Receiver], Awaitable[str]]]:
    runners: list[tuple[web.AppRunner, Receiver]] = []

    async def start(handler: Handler, receiver: Receiver) -> str:
        app = web.Application()
        app.router.add_post("/hook", handler)
        runner = web.AppRunner(app, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append((runner, receiver))
        host, port = runner.addresses[0][:2]
        return f"http://{host}:{port}/hook"

    yield start
    for runner, receiver in runners:
        receiver.release.set()
        await runner.cleanup()


async def test_delivers_events_in_order(serve: Any) -> None:
    receiver = Receiver()
    url = await serve(receiver.accept, receiver)
    async with WebhookNotifier(url) as notifier:
        assert notifier.notify({"kind": "gate", "route": "/r", "passed": True})
        assert notifier.notify({"kind": "rollback", "route": "/r", "reason": "p99"})
    assert [e["kind"] for e in receiver.events] == ["gate", "rollback"]
    assert receiver.events[1]["reason"] == "p99"
    assert notifier.stats.sent == 2 and notifier.stats.failed == 0


async def test_retries_with_backoff(serve: Any) -> None:
    receiver = Receiver(fail_first=2)
    url = await serve(receiver.accept, receiver)
    started = time.monotonic()
    async with WebhookNotifier(url, retries=3, backoff_s=0.05) as notifier:
        notifier.notify({"kind": "trigger", "name": "stale-model"})
    assert receiver.attempts == 3 and receiver.events == [{"kind": "trigger",
                                                           "name": "stale-model"}]
    assert notifier.stats.retries == 2 and notifier.stats.sent == 1
    assert time.monotonic() - started >= 0.05 + 0.1  # backoff 0.05 then 0.1


async def test_gives_up_after_the_retries(serve: Any) -> None:
    receiver = Receiver(fail_first=10)
    url = await serve(receiver.accept, receiver)
    async with WebhookNotifier(url, retries=1, backoff_s=0.01) as notifier:
        notifier.notify({"kind": "hold"})
    assert receiver.attempts == 2
    assert notifier.stats.failed == 1 and notifier.stats.sent == 0


async def test_client_errors_are_not_retried(serve: Any) -> None:
    receiver = Receiver(status=400)
    url = await serve(receiver.accept, receiver)
    async with WebhookNotifier(url, retries=3, backoff_s=0.01) as notifier:
        notifier.notify({"kind": "hold"})
    assert receiver.attempts == 1 and notifier.stats.failed == 1


async def test_a_hanging_receiver_times_out(serve: Any) -> None:
    receiver = Receiver()
    url = await serve(receiver.hang, receiver)
    started = time.monotonic()
    async with WebhookNotifier(url, timeout_s=0.2, retries=1, backoff_s=0.01) as notifier:
        notifier.notify({"kind": "gate"})
    elapsed = time.monotonic() - started
    assert receiver.attempts == 2 and notifier.stats.failed == 1
    assert 0.4 <= elapsed < 2.0


async def test_full_queue_drops_and_counts(serve: Any) -> None:
    receiver = Receiver()
    url = await serve(receiver.hang, receiver)
    notifier = WebhookNotifier(url, timeout_s=5, queue_size=2, drain_timeout_s=0.2)
    async with notifier:
        accepted = [notifier.notify({"kind": "trigger", "i": i}) for i in range(5)]
        assert accepted == [True, True, False, False, False]
        assert notifier.stats.dropped == 3
        started = time.monotonic()
    assert time.monotonic() - started < 1.5  # the drain deadline, not the 5 s timeout
    assert notifier.stats.abandoned >= 1 and notifier.stats.sent == 0
    assert notifier.notify({"kind": "gate"}) is False  # closed: dropped and counted
    assert notifier.stats.dropped == 4


async def test_aclose_is_idempotent_and_rejects_bad_kinds(serve: Any) -> None:
    receiver = Receiver()
    url = await serve(receiver.accept, receiver)
    notifier = WebhookNotifier(url)
    async with notifier:
        with pytest.raises(ValueError, match="event kind"):
            notifier.notify({"kind": "party"})
    await notifier.aclose()
    await asyncio.gather(notifier.aclose(), notifier.aclose())
    never_started = WebhookNotifier(url)
    await never_started.aclose()
    with pytest.raises(RuntimeError):
        never_started.start()

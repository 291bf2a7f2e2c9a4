"""One owner for a process's background tasks: none is fire-and-forget.

Every task is kept until it ends. At shutdown :meth:`TaskOwner.cancel` cancels and awaits
the ones that may be cut (a readiness watch, a schedule, a reload), and :meth:`join` awaits
the ones that must finish (a retired backend's graceful close).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

__all__ = ["TaskOwner"]

log = logging.getLogger(__name__)


class TaskOwner:
    """Starts tasks, keeps them until they end, and ends them on shutdown."""

    def __init__(self) -> None:
        self._cut: set[asyncio.Task[Any]] = set()
        self._kept: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Coroutine[Any, Any, Any], *, name: str,
              finish: bool = False) -> asyncio.Task[Any]:
        """Run ``coro`` as an owned task; ``finish``: awaited at shutdown, never cut."""
        task = asyncio.get_running_loop().create_task(coro, name=name)
        owned = self._kept if finish else self._cut
        owned.add(task)
        task.add_done_callback(owned.discard)
        task.add_done_callback(_log_failure)
        return task

    def __len__(self) -> int:
        return len(self._cut) + len(self._kept)

    async def cancel(self) -> None:
        """Cancel every task that may be cut and await them."""
        cut = set(self._cut)
        for task in cut:
            task.cancel()
        if cut:
            await asyncio.gather(*cut, return_exceptions=True)

    async def join(self) -> None:
        """Await every task that must finish."""
        if self._kept:
            await asyncio.gather(*set(self._kept), return_exceptions=True)


def _log_failure(task: asyncio.Task[Any]) -> None:
    """An owned task that failed is said in the log (its exception is retrieved here)."""
    if not task.cancelled() and task.exception() is not None:
        log.error("task %s failed", task.get_name(), exc_info=task.exception())

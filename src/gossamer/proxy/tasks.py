"""Named background tasks (DESIGN §6.5: every background task has a name and an owner).

``spawn`` starts a task, keeps a strong reference to it until it finishes (the event loop only
holds weak ones) and logs any exception it ends with, so no failure passes silently. The owner
keeps the returned task and stops it with ``cancel_and_wait``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine, Iterable
from typing import Any, TypeVar

__all__ = ["cancel_and_wait", "running", "spawn"]

log = logging.getLogger(__name__)

T = TypeVar("T")

_running: set[asyncio.Task[Any]] = set()


def spawn(coro: Coroutine[Any, Any, T], *, name: str) -> asyncio.Task[T]:
    """Start ``coro`` as a task called ``name`` on the running loop."""
    task = asyncio.get_running_loop().create_task(coro, name=name)
    _running.add(task)
    task.add_done_callback(_finished)
    return task


def _finished(task: asyncio.Task[Any]) -> None:
    _running.discard(task)
    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None:
        log.error("background task %r failed", task.get_name(), exc_info=exc)


def running() -> frozenset[asyncio.Task[Any]]:
    """The background tasks started with ``spawn`` that have not finished yet."""
    return frozenset(_running)


async def cancel_and_wait(tasks: Iterable[asyncio.Task[Any]]) -> None:
    """Cancel ``tasks`` and wait until all have finished (their errors are already logged)."""
    pending = [task for task in tasks if not task.done()]
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.wait(pending)

"""Long-lived asyncio loops as named tasks whose crash is logged and surfaced, never swallowed."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

log = logging.getLogger(__name__)


class TaskGroup:
    """Start named forever-tasks; ``wait`` returns (raising) when any of them ends or fails."""

    def __init__(self) -> None:
        self.tasks: list[asyncio.Task[Any]] = []

    def start(self, name: str, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self.tasks.append(task)
        return task

    async def wait(self, stop: asyncio.Event) -> None:
        stopper = asyncio.get_running_loop().create_task(stop.wait(), name="stop")
        done, _ = await asyncio.wait([*self.tasks, stopper], return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        for task in done:
            if task is stopper or task.cancelled():
                continue
            exc = task.exception()
            if exc is not None:
                log.error("task %s crashed", task.get_name(), exc_info=exc)
                raise RuntimeError(f"task {task.get_name()} crashed: {exc!r}") from exc
            log.error("task %s ended unexpectedly", task.get_name())
            raise RuntimeError(f"task {task.get_name()} ended unexpectedly")

    async def cancel(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

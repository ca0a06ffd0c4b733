"""One supervisor for a component's long-running background loops (``asyncio.TaskGroup`` style).

Why: a loop whose exception is only logged by a done-callback leaves its component looking alive while it
no longer does its job (a node whose credential renewal died keeps serving until the credential expires).
Here every loop has a policy. ``restart=True``: a loop that raises starts again after an exponential backoff
with jitter, at most ``max_restarts`` times within ``restart_window`` seconds; one more failure, or any
failure of a ``restart=False`` loop, stops the owner loudly: a critical log line and ``on_fatal(reason)``
(the agent runtime stops, the CLI exits non-zero). A loop that returns is finished; cancellation is
shutdown, never a failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from node_agent.backoff import Backoff

__all__ = ["LoopFactory", "TaskSupervisor"]

logger = logging.getLogger(__name__)

#: Restart delays: 0.5-1 s after the first failure, doubling up to a minute.
DEFAULT_BACKOFF = Backoff(base=1.0, factor=2.0, maximum=60.0)

#: Makes a fresh coroutine of the loop for every (re)start.
LoopFactory = Callable[[], Coroutine[Any, Any, None]]


@dataclass(slots=True)
class _Loop:
    name: str
    factory: LoopFactory
    restart: bool
    task: asyncio.Task[None] | None = None
    failures: deque[float] = field(default_factory=deque)
    restarts: int = 0


class TaskSupervisor:
    """Starts named loops, restarts the ones that die, stops the owner when one keeps dying."""

    def __init__(
        self,
        owner: str,
        *,
        on_fatal: Callable[[str], None] | None = None,
        backoff: Backoff = DEFAULT_BACKOFF,
        max_restarts: int = 5,
        restart_window: float = 600.0,
        rng: Callable[[], float] = random.random,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.owner = owner
        self.on_fatal = on_fatal
        self.backoff = backoff
        self.max_restarts = max_restarts
        self.restart_window = restart_window
        self.rng = rng
        self.clock = clock
        #: The first fatal reason (None while every loop is fine).
        self.failure: str | None = None
        self._loops: dict[str, _Loop] = {}
        self._closed = False

    def start(self, name: str, factory: LoopFactory, *, restart: bool = True) -> None:
        """Run ``factory()`` as the loop ``name`` (unique per supervisor) until it returns or we close."""
        if self._closed:
            raise RuntimeError(f"{self.owner}: the supervisor is closed")
        if name in self._loops:
            raise ValueError(f"{self.owner}: a loop named {name!r} already runs")
        loop = _Loop(name, factory, restart)
        self._loops[name] = loop
        loop.task = asyncio.get_running_loop().create_task(self._run(loop), name=name)

    def restarts(self, name: str) -> int:
        """How many times the loop ``name`` was restarted after a failure."""
        return self._loops[name].restarts

    def running(self, name: str) -> bool:
        loop = self._loops.get(name)
        return loop is not None and loop.task is not None and not loop.task.done()

    async def _run(self, loop: _Loop) -> None:
        while True:
            try:
                await loop.factory()
                return
            except Exception as exc:
                delay = self._after_failure(loop, exc)
                if delay is None:
                    return
            loop.restarts += 1
            await asyncio.sleep(delay)

    def _after_failure(self, loop: _Loop, exc: Exception) -> float | None:
        """The delay before the restart, or None when the failure is fatal (the owner is told)."""
        now = self.clock()
        loop.failures.append(now)
        while loop.failures and loop.failures[0] < now - self.restart_window:
            loop.failures.popleft()
        recent = len(loop.failures)
        if loop.restart and recent <= self.max_restarts and not self._closed:
            delay = self.backoff.delay(recent, self.rng())
            logger.error(
                "%s: background loop %s failed (%d time(s) in %.0fs); restarting in %.1fs",
                self.owner,
                loop.name,
                recent,
                self.restart_window,
                delay,
                exc_info=exc,
            )
            return delay
        why = "keeps failing" if loop.restart else "failed"
        self._fail(f"background loop {loop.name} {why}: {exc!r}", exc)
        return None

    def _fail(self, reason: str, exc: BaseException) -> None:
        if self.failure is not None:
            logger.error("%s: %s", self.owner, reason, exc_info=exc)
            return
        self.failure = reason
        logger.critical("%s stops: %s", self.owner, reason, exc_info=exc)
        if self.on_fatal is not None:
            try:
                self.on_fatal(reason)
            except Exception:
                logger.exception("%s: on_fatal callback failed", self.owner)

    async def stop(self, name: str) -> None:
        """Cancel the loop ``name`` (if it runs) and wait until it has ended; the others go on."""
        loop = self._loops.pop(name, None)
        if loop is not None and loop.task is not None:
            loop.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loop.task

    async def close(self) -> None:
        """Cancel every loop (a pending restart too) and wait until they have ended."""
        self._closed = True
        tasks = [loop.task for loop in self._loops.values() if loop.task is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

"""A clock that moves only when the test says so, for `DHTNode.create(clock=...)` (see `dht/clock.py`).

`await clock.advance(s)` moves time forward, wakes every sleeper whose time has come and returns once each
woken task sleeps again or has ended, so a test observes whole maintenance rounds, never half of one.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time

from tests.processes import wait_until_async


class ManualClock:
    def __init__(self, start: float | None = None) -> None:
        self.now = time.time() if start is None else start  # records cross processes: start at real time
        self._sleepers: list[tuple[float, int, asyncio.Future[None], asyncio.Task[object] | None]] = []
        self._order = itertools.count()

    def time(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        wake: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (self.now + seconds, next(self._order), wake, asyncio.current_task())
        heapq.heappush(self._sleepers, entry)
        try:
            await wake
        finally:
            if not wake.done():  # cancelled while asleep
                self._sleepers.remove(entry)
                heapq.heapify(self._sleepers)

    @property
    def sleeping(self) -> set[asyncio.Task[object]]:
        return {task for _, _, wake, task in self._sleepers if task is not None and not wake.done()}

    async def advance(self, seconds: float, timeout: float = 10.0) -> None:
        """Move time forward by `seconds`; return when every task it woke sleeps here again or has ended."""
        await asyncio.sleep(0)  # tasks spawned just now reach their first sleep before time moves
        self.now += seconds
        woken: list[asyncio.Task[object] | None] = []
        while self._sleepers and self._sleepers[0][0] <= self.now:
            _, _, wake, task = heapq.heappop(self._sleepers)
            if not wake.done():
                wake.set_result(None)
                woken.append(task)
        tasks = {task for task in woken if task is not None}
        await wait_until_async(
            lambda: all(task.done() or task in self.sleeping for task in tasks),
            timeout=timeout,
            interval=0.005,
            what="the tasks woken by the clock sleep again or end",
        )

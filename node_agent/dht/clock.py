"""The clock a :class:`~node_agent.dht.node.DHTNode` reads and schedules its maintenance by.

The sans-IO core takes ``now`` as an argument; the node gets it from here, so tests can move time
(record expiry, bans, bucket ages, republish rounds) instead of sleeping. Network timeouts stay on the
event loop's own time: datagrams travel in real time whatever the clock says.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol


class Clock(Protocol):
    def time(self) -> float:
        """Unix time in seconds: record expirations, message timestamps, bans and bucket ages."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait until ``seconds`` of this clock's time have passed (the maintenance schedule)."""
        ...


class SystemClock:
    """The real clock: ``time.time()`` and ``asyncio.sleep``."""

    def time(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


SYSTEM_CLOCK = SystemClock()

"""The manual clock DHT tests move time with: sleepers wake in order, only once their time has come."""

from __future__ import annotations

import asyncio

from tests.node_agent.manual_clock import ManualClock


async def test_sleepers_wake_when_time_reaches_them_and_advance_waits_for_their_next_sleep() -> None:
    clock = ManualClock(start=1000.0)
    woke: list[tuple[str, float]] = []

    async def loop(name: str, period: float) -> None:
        while True:
            await clock.sleep(period)
            woke.append((name, clock.time()))

    tasks = [asyncio.create_task(loop("fast", 1.0)), asyncio.create_task(loop("slow", 5.0))]
    try:
        await clock.advance(0.5)
        assert woke == []
        await clock.advance(0.5)
        assert woke == [("fast", 1001.0)]
        await clock.advance(4.0)  # one wake per sleep: the fast loop sleeps again from 1005
        assert sorted(woke) == [("fast", 1001.0), ("fast", 1005.0), ("slow", 1005.0)]
        assert len(clock.sleeping) == 2
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    assert clock.sleeping == set()  # cancelled sleepers leave no entry behind

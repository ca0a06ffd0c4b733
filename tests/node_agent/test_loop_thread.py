"""The event-loop thread helper behind the trainer's expert caller and its portal telemetry."""

from __future__ import annotations

import asyncio
import threading

import pytest

from node_agent.loop_thread import LoopThread


def test_runs_coroutines_from_another_thread_and_stops_with_a_teardown() -> None:
    thread = LoopThread("test-loop")
    thread.start()
    assert thread.run(asyncio.sleep(0, result=7)).result(5) == 7
    names = thread.run(_thread_name()).result(5)
    torn_down: list[str] = []

    async def teardown() -> None:
        torn_down.append(threading.current_thread().name)

    thread.stop(teardown(), timeout=5)
    assert names == "test-loop" and torn_down == ["test-loop"]
    assert not thread.running and not thread.started
    coro = asyncio.sleep(0)
    with pytest.raises(RuntimeError):
        thread.run(coro)
    thread.stop()  # twice: nothing to do
    again = LoopThread("test-loop")
    again.start()
    with pytest.raises(RuntimeError):
        again.start()
    again.stop()


def test_a_failing_or_hanging_teardown_does_not_block_stop() -> None:
    thread = LoopThread("test-loop")
    thread.start()

    async def hangs() -> None:
        await asyncio.Event().wait()

    leftover = thread.run(hangs())
    thread.stop(hangs(), timeout=0.2)
    assert not thread.started and leftover.cancelled()  # tasks still pending are cancelled, not leaked


async def _thread_name() -> str:
    return threading.current_thread().name

"""The task supervisor: a loop that dies restarts with backoff; one that keeps dying stops its owner."""

from __future__ import annotations

import asyncio
import logging

import pytest

from node_agent.backoff import Backoff
from node_agent.supervisor import TaskSupervisor
from tests.processes import wait_until_async

FAST = Backoff(base=0.01, factor=2.0, maximum=0.02)


async def test_a_loop_that_dies_restarts_and_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    runs: list[int] = []
    resumed = asyncio.Event()

    async def loop() -> None:
        runs.append(len(runs))
        if len(runs) == 1:
            raise RuntimeError("boom")
        resumed.set()
        await asyncio.Event().wait()

    fatal: list[str] = []
    supervisor = TaskSupervisor("test owner", on_fatal=fatal.append, backoff=FAST)
    supervisor.start("worker", loop)
    try:
        async with asyncio.timeout(5):
            await resumed.wait()
        assert supervisor.restarts("worker") == 1 and supervisor.running("worker")
        assert fatal == [] and supervisor.failure is None
        assert any("restarting in" in r.getMessage() and r.exc_info for r in caplog.records)
    finally:
        await supervisor.close()
    assert not supervisor.running("worker")


async def test_a_loop_that_keeps_dying_stops_the_owner_loudly(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.CRITICAL, logger="node_agent.supervisor")

    async def loop() -> None:
        raise ValueError("always broken")

    fatal: list[str] = []
    supervisor = TaskSupervisor("test owner", on_fatal=fatal.append, backoff=FAST, max_restarts=3)
    supervisor.start("worker", loop)
    try:
        await wait_until_async(lambda: fatal, timeout=5)
        assert supervisor.restarts("worker") == 3
        assert "worker keeps failing" in fatal[0] and "always broken" in fatal[0]
        assert supervisor.failure == fatal[0]
        assert [r.levelno for r in caplog.records if "stops" in r.getMessage()] == [logging.CRITICAL]
        await asyncio.sleep(0.05)
        assert not supervisor.running("worker") and len(fatal) == 1  # no restart after the fatal one
    finally:
        await supervisor.close()


async def test_a_loop_without_restart_is_fatal_at_its_first_failure() -> None:
    async def loop() -> None:
        raise OSError("socket gone")

    fatal: list[str] = []
    supervisor = TaskSupervisor("test owner", on_fatal=fatal.append, backoff=FAST)
    supervisor.start("critical", loop, restart=False)
    try:
        await wait_until_async(lambda: fatal, timeout=5)
        assert supervisor.restarts("critical") == 0 and "critical failed" in fatal[0]
    finally:
        await supervisor.close()


async def test_failures_outside_the_window_are_forgotten() -> None:
    now = [0.0]
    failures = 0

    async def loop() -> None:
        nonlocal failures
        failures += 1
        now[0] += 100.0  # every failure comes long after the one before
        if failures < 6:
            raise RuntimeError("rare")
        await asyncio.Event().wait()

    fatal: list[str] = []
    supervisor = TaskSupervisor(
        "test owner", on_fatal=fatal.append, backoff=FAST, max_restarts=1, restart_window=50.0,
        clock=lambda: now[0],
    )  # fmt: skip
    supervisor.start("worker", loop)
    try:
        await wait_until_async(lambda: failures == 6, timeout=5)
        assert fatal == [] and supervisor.restarts("worker") == 5
    finally:
        await supervisor.close()


async def test_a_returning_loop_is_finished_and_close_cancels_the_others() -> None:
    cancelled = asyncio.Event()

    async def done() -> None:
        return None

    async def forever() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            cancelled.set()

    supervisor = TaskSupervisor("test owner", backoff=FAST)
    supervisor.start("done", done)
    supervisor.start("forever", forever)
    with pytest.raises(ValueError):
        supervisor.start("forever", forever)
    await wait_until_async(lambda: not supervisor.running("done"), timeout=5)
    assert supervisor.restarts("done") == 0 and supervisor.running("forever")
    await supervisor.stop("forever")
    assert cancelled.is_set() and not supervisor.running("forever")
    await supervisor.close()
    with pytest.raises(RuntimeError):
        supervisor.start("late", forever)

"""The waiting helpers every test relies on: they return what they waited for and fail loudly in time."""

from __future__ import annotations

import asyncio
import itertools
import socket

import pytest

from tests.processes import free_port, wait_until, wait_until_async


def test_wait_until_returns_the_first_truthy_value_or_times_out_naming_what() -> None:
    counter = itertools.count()
    assert wait_until(lambda: next(counter) >= 3 and "ready", timeout=5, interval=0.001) == "ready"
    with pytest.raises(TimeoutError, match="the impossible"):
        wait_until(lambda: False, timeout=0.05, interval=0.01, what="the impossible")


async def test_wait_until_async_polls_coroutines_and_bounds_each_poll() -> None:
    polls = itertools.count()

    async def lookup() -> int:
        await asyncio.sleep(0)
        return next(polls) // 3

    assert await wait_until_async(lookup, timeout=5, interval=0.001) == 1

    async def hangs() -> bool:
        await asyncio.sleep(60)
        return True

    with pytest.raises(TimeoutError):
        await wait_until_async(hangs, timeout=0.05)


def test_free_port_can_be_bound() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", free_port()))

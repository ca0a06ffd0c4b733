"""Helpers for tests that start real processes and servers, or wait for real components to reach a state.

Tests wait on what they can observe (an event a handler sets, or a condition polled by `wait_until` /
`wait_until_async` with a timeout), never on a sleep that hopes something has happened by then.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def stop_process(process: subprocess.Popen[Any], *, timeout: float = 15, sig: int = signal.SIGTERM) -> None:
    """Ask `process` to stop (SIGTERM by default); kill it if it has not exited after `timeout` seconds."""
    if process.poll() is not None:
        return
    process.send_signal(sig)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)


def wait_for_http(url: str, *, process: subprocess.Popen[Any], log: Path, timeout: float = 60) -> None:
    """Wait until `url` answers with a 2xx (a server `process` started); RuntimeError with its log if it
    exits first or does not answer within `timeout` seconds."""

    def answers() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return True
        except OSError:
            return False

    try:
        wait_until(answers, timeout=timeout, interval=0.2, what=f"{url} answers")
    except (RuntimeError, TimeoutError) as exc:
        raise RuntimeError(f"{exc}\n{log.read_text(errors='replace')}") from None


@contextlib.contextmanager
def serving_portal(module: str, *, cwd: Path, env: dict[str, str], log: Path) -> Iterator[str]:
    """`python -m <module> -b 127.0.0.1 -p <free port> config.asgi:application` (`daphne` or `live.serve`)
    run in `cwd`, its output in `log`; yields its URL once `/healthz` answers and stops it afterwards."""
    port = free_port()
    with log.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", module, "-b", "127.0.0.1", "-p", str(port), "config.asgi:application"],
            cwd=cwd, env=env, stdout=output, stderr=subprocess.STDOUT,
        )  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        try:
            wait_for_http(f"{url}/healthz", process=process, log=log)
            yield url
        finally:
            stop_process(process, timeout=10)


def free_port() -> int:
    """A TCP port the OS reports free on 127.0.0.1 now, for a server started in another process or thread
    soon after (a server in this process should bind port 0 itself instead)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until(condition: Callable[[], T], *, timeout: float, interval: float = 0.05, what: str = "") -> T:
    """Poll `condition` until it returns something truthy and return that; TimeoutError after `timeout`
    seconds. An exception from `condition` (a process that died, say) ends the wait at once."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"not reached within {timeout:g} s: {what or _describe(condition)}")
        time.sleep(interval)


async def wait_until_async(
    condition: Callable[[], T | Awaitable[T]], *, timeout: float, interval: float = 0.02, what: str = ""
) -> T:
    """`wait_until` for tests on an event loop: the loop keeps running between polls, and `condition` may
    be a coroutine function (a DHT lookup, say); each poll is bounded by what is left of `timeout`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = condition()
        if inspect.isawaitable(value):
            value = await asyncio.wait_for(value, max(0.001, deadline - loop.time()))
        if value:
            return value  # type: ignore[return-value]
        if loop.time() >= deadline:
            raise TimeoutError(f"not reached within {timeout:g} s: {what or _describe(condition)}")
        await asyncio.sleep(interval)


def _describe(condition: Callable[..., object]) -> str:
    try:
        return inspect.getsource(condition).strip()
    except (OSError, TypeError):
        return repr(condition)

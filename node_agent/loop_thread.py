"""An asyncio event loop on its own daemon thread, for synchronous callers (PyTorch training code).

The trainer's expert calls (`moe.client.ExpertCaller`) and its portal telemetry
(`portal.reporter.BackgroundTelemetry`) both run async code from a synchronous training loop; this is the
one place that starts, feeds and stops such a loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["LoopThread", "new_event_loop"]

T = TypeVar("T")


def new_event_loop(use_uvloop: bool) -> asyncio.AbstractEventLoop:
    """A uvloop loop when asked for and installed, else the standard one."""
    if use_uvloop:
        try:
            import uvloop

            return uvloop.new_event_loop()
        except ImportError:
            pass
    return asyncio.new_event_loop()


class LoopThread:
    """``start()``, then ``run(coro)`` from any thread (a ``concurrent.futures.Future``), then ``stop()``."""

    def __init__(self, name: str, *, use_uvloop: bool = False) -> None:
        self.name = name
        self.use_uvloop = use_uvloop
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def started(self) -> bool:
        return self._thread is not None

    @property
    def running(self) -> bool:
        return self.loop is not None and self.loop.is_running()

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError(f"{self.name}: loop thread already started")
        self.loop = new_event_loop(self.use_uvloop)
        self._thread = threading.Thread(target=self.loop.run_forever, name=self.name, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Schedule ``coro`` on the loop; RuntimeError (and the coroutine closed) if it is not running."""
        if self.loop is None or self._thread is None or self.loop.is_closed():
            coro.close()
            raise RuntimeError(f"{self.name} is not running")
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def stop(self, teardown: Coroutine[Any, Any, Any] | None = None, timeout: float = 10.0) -> None:
        """Run ``teardown`` on the loop (its errors and a timeout are swallowed), stop the loop, join."""
        loop, thread = self.loop, self._thread
        if loop is None:
            if teardown is not None:
                teardown.close()
            return
        if teardown is not None:
            if loop.is_running():
                with contextlib.suppress(Exception):
                    asyncio.run_coroutine_threadsafe(teardown, loop).result(timeout)
            else:
                teardown.close()
        if loop.is_running():
            loop.call_soon_threadsafe(loop.stop)
        if thread is not None:
            thread.join(timeout)
        if not loop.is_running():
            _cancel_pending(loop, timeout)
            loop.close()
        self.loop = self._thread = None


def _cancel_pending(loop: asyncio.AbstractEventLoop, timeout: float) -> None:
    """Cancel the tasks still on a stopped loop (as ``asyncio.run`` does), waiting at most ``timeout``."""
    pending = asyncio.all_tasks(loop)
    if not pending:
        return
    for task in pending:
        task.cancel()
    loop.run_until_complete(asyncio.wait(pending, timeout=timeout))

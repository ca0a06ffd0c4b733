"""Batches requests from many trainers into one forward/backward per expert (Learning@home, section 3.2).

Each (expert, method) has a queue. A collector takes the oldest request, then waits up to `max_wait` for
more until `max_batch_size` samples are gathered, and while the compute thread is still busy with earlier
work it keeps gathering (a batch formed earlier would only wait in line, and requests arriving meanwhile
would miss it). It concatenates the requests along the batch axis, runs the batch on a single compute
thread (PyTorch parallelises inside ops; one thread keeps optimiser steps ordered) and splits the results
back to the callers. Requests whose non-batch shapes differ run in separate batches.

A queue added with `tagged=True` also hands its function each request's `tag` (in batch order), for work
that must know whom the rows belong to (kept forward graphs: `forward_cache`). Other work goes straight to
the compute thread with `call`. Everything on the compute thread runs in arrival order, one job at a time,
so jobs may share state (the forward cache, optimiser state) without locks.

Concatenating pays twice on CPU: one 1,024-row forward and backward of the feed-forward block runs ~18%
faster than four of 256 rows (`benchmarks/bench_experts.py`), and one optimiser step serves them all.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch

logger = logging.getLogger(__name__)

BatchFn = Callable[[list[torch.Tensor]], list[torch.Tensor]]
#: `tagged=True` queues: `(columns, tags) -> outputs`, tags in the order of the batch's rows.
TaggedBatchFn = Callable[[list[torch.Tensor], list[Any]], list[torch.Tensor]]
T = TypeVar("T")
#: Longest a collected batch waits for a busy compute thread before queueing behind it anyway.
MAX_BUSY_WAIT = 1.0


@dataclass(slots=True)
class _Request:
    tensors: list[torch.Tensor]
    future: asyncio.Future[Any]
    tag: Any = None

    @property
    def size(self) -> int:
        return self.tensors[0].shape[0]

    @property
    def signature(self) -> tuple[tuple[int, ...], ...]:
        return tuple(tuple(t.shape[1:]) for t in self.tensors)


@dataclass(slots=True)
class _Queue:
    fn: BatchFn | TaggedBatchFn
    tagged: bool = False
    items: deque[_Request] = field(default_factory=deque)
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None


class BatchingRuntime:
    def __init__(self, max_batch_size: int = 4096, max_wait: float = 0.005) -> None:
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="expert-compute")
        self._queues: dict[str, _Queue] = {}
        self.batches = 0
        self.samples = 0
        #: Jobs submitted to the compute thread and not finished; `_idle` is set when there are none.
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def add_queue(self, name: str, fn: BatchFn | TaggedBatchFn, *, tagged: bool = False) -> None:
        """Register a batched function, e.g. `("ffn.0.1/forward", backend.forward)`; see the docstring."""
        queue = self._queues[name] = _Queue(fn, tagged)
        queue.task = asyncio.create_task(self._collect(name, queue), name=f"batch-{name}")

    async def submit(self, name: str, tensors: list[torch.Tensor], tag: Any = None) -> list[torch.Tensor]:
        """Queue one request (all tensors share the batch axis 0); the answer is its slice of the outputs."""
        queue = self._queues[name]
        request = _Request(tensors, asyncio.get_running_loop().create_future(), tag)
        queue.items.append(request)
        queue.ready.set()
        return await request.future

    async def _collect(self, name: str, queue: _Queue) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not queue.items:
                queue.ready.clear()
                await queue.ready.wait()
            deadline = loop.time() + self.max_wait
            while sum(r.size for r in queue.items) < self.max_batch_size and loop.time() < deadline:
                queue.ready.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(queue.ready.wait(), deadline - loop.time())
            if self._in_flight:  # the compute thread is busy: whatever arrives meanwhile joins this batch
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._idle.wait(), MAX_BUSY_WAIT)
            batch = self._take_batch(queue)
            if batch:
                await self._run(name, queue, batch)

    async def _execute(self, fn: Callable[..., T], *args: Any) -> T:
        self._in_flight += 1
        self._idle.clear()
        try:
            return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)
        finally:
            self._in_flight -= 1
            if not self._in_flight:
                self._idle.set()

    async def call(self, fn: Callable[..., T], *args: Any, samples: int = 0) -> T:
        """Run `fn(*args)` on the compute thread, after the jobs already queued there; counts `samples`."""
        result = await self._execute(fn, *args)
        if samples:
            self.batches += 1
            self.samples += samples
        return result

    def _take_batch(self, queue: _Queue) -> list[_Request]:
        batch: list[_Request] = []
        total = 0
        while queue.items:
            request = queue.items[0]
            if request.future.done():  # caller gave up (timeout, cancel)
                queue.items.popleft()
                continue
            if batch and (
                total + request.size > self.max_batch_size or request.signature != batch[0].signature
            ):
                break
            batch.append(queue.items.popleft())
            total += request.size
        return batch

    async def _run(self, name: str, queue: _Queue, batch: list[_Request]) -> None:
        sizes = [r.size for r in batch]
        columns = [
            torch.cat(parts) if len(batch) > 1 else parts[0]
            for parts in zip(*(r.tensors for r in batch), strict=True)
        ]
        args: tuple[Any, ...] = (columns, [r.tag for r in batch]) if queue.tagged else (columns,)
        try:
            outputs = await self._execute(queue.fn, *args)
            pieces = [o.split(sizes) for o in outputs]
        except Exception as exc:
            logger.warning("batch of %d for %s failed: %s", sum(sizes), name, exc)
            _fail_all(batch, exc)
            return
        self.batches += 1
        self.samples += sum(sizes)
        for i, request in enumerate(batch):
            if not request.future.done():
                request.future.set_result([p[i] for p in pieces])

    async def shutdown(self) -> None:
        for queue in self._queues.values():
            if queue.task is not None:
                queue.task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await queue.task
            for request in queue.items:
                if not request.future.done():
                    request.future.set_exception(RuntimeError("server shutting down"))
        self.executor.shutdown(wait=True)


def _fail_all(batch: list[_Request], exc: BaseException) -> None:
    """Every caller of a failed batch gets the error (callers that gave up meanwhile are skipped)."""
    for request in batch:
        if not request.future.done():
            request.future.set_exception(exc)

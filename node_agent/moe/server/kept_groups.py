"""Kept forwards of several requests run as one concatenated batch, and their backwards gathered again.

The server concatenates kept-forward requests that arrive together (as it does plain forwards: larger
matmuls, one optimiser step) and keeps one autograd graph for the batch. Each request stays a *member*
with its own forward id and rows. A member's backward brings the gradients for its rows; once every member
has sent its gradients, or the wait (`ServerOptions.step_delay`) is over, one backward runs over the whole
graph with zeros for the rows of members that did not send theirs. Rows do not interact in a batch (the
batching runtime already relies on this), so every member that did send gets exactly the gradients a
backward of its own would have given, and the absent ones add nothing to the parameter gradients. Absent
members' forward ids are dropped: a late backward falls back to re-sending its inputs.

`KeptGroup` is pure bookkeeping over tensors (no event loop, no clock, no cache). `KeptForwards` is the
server's coordination around it: the batch function that keeps one graph per concatenated batch, gathering
backwards (on the compute thread, one job at a time in arrival order, so no locks), the bounded wait on the
event loop (`step_delay`) and the optimiser step once nothing made with the same parameters is awaited.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from node_agent.moe.server.backend import ExpertBackend, KeptForward
from node_agent.moe.server.forward_cache import ForwardCache
from node_agent.moe.server.runtime import BatchingRuntime

__all__ = ["KeepTicket", "KeptForwards", "KeptGroup"]

logger = logging.getLogger(__name__)


@dataclass(slots=True, eq=False)
class KeptGroup:
    """One concatenated kept forward and what its members have sent back so far."""

    uid: str
    kept: KeptForward
    fids: list[bytes]
    sizes: list[int]
    #: member index -> output gradients (for that member's rows)
    grads: dict[int, list[torch.Tensor]] = field(default_factory=dict)
    #: member index -> whatever the server resolves with the answer (a future)
    waiters: dict[int, Any] = field(default_factory=dict)
    done: bool = False

    def check_grads(self, index: int, grads: list[torch.Tensor]) -> None:
        """Raise ValueError unless `grads` fit member `index`'s rows of the kept outputs."""
        outputs = self.kept.outputs
        if len(grads) != len(outputs):
            raise ValueError(f"expected {len(outputs)} output gradients, got {len(grads)}")
        for output, grad in zip(outputs, grads, strict=True):
            expected = (self.sizes[index], *output.shape[1:])
            if tuple(grad.shape) != expected or grad.dtype != output.dtype:
                raise ValueError(
                    f"gradient {tuple(grad.shape)} {grad.dtype} does not match the kept forward's output "
                    f"{expected} {output.dtype}"
                )

    def arrive(self, index: int, grads: list[torch.Tensor], waiter: Any) -> None:
        self.check_grads(index, grads)
        self.grads[index] = grads
        self.waiters[index] = waiter

    def ready(self, still_awaited: Callable[[bytes], bool]) -> bool:
        """Every member has sent its gradients or can no longer send them (`still_awaited(fid)` is False)."""
        return all(i in self.grads or not still_awaited(fid) for i, fid in enumerate(self.fids))

    def absent_fids(self) -> list[bytes]:
        return [fid for i, fid in enumerate(self.fids) if i not in self.grads]

    def full_grads(self) -> list[torch.Tensor]:
        """Output gradients for the whole batch: the members' own, zeros for the absent ones."""
        columns = []
        for k, output in enumerate(self.kept.outputs):
            parts = [
                self.grads[i][k] if i in self.grads else output.new_zeros((size, *output.shape[1:]))
                for i, size in enumerate(self.sizes)
            ]
            columns.append(torch.cat(parts) if len(parts) > 1 else parts[0])
        return columns

    @property
    def arrived_samples(self) -> int:
        return sum(self.sizes[i] for i in self.grads)

    def split(self, input_grads: list[torch.Tensor]) -> dict[int, list[torch.Tensor]]:
        """The input gradients of each member that sent its gradients."""
        pieces = [g.split(self.sizes) for g in input_grads]
        return {i: [p[i] for p in pieces] for i in self.grads}


@dataclass(slots=True)
class KeepTicket:
    """A kept-forward request in a batch: its id, who may take it back, its rows; `stored` once kept."""

    fid: bytes
    owner: bytes
    rows: int
    stored: bool = False


class KeptForwards:
    """Kept forwards of one server: batches kept as groups, backwards gathered, steps taken once due.

    Methods marked "compute thread" run as jobs of the batching runtime's executor; the others on the loop.
    """

    def __init__(
        self,
        cache: ForwardCache,
        runtime: BatchingRuntime,
        *,
        step_delay: float,
        max_batch_size: int,
        on_step_failed: Callable[[], None] = lambda: None,
    ) -> None:
        self.cache = cache
        self.runtime = runtime
        self.step_delay = step_delay
        self.max_batch_size = max_batch_size
        self.on_step_failed = on_step_failed
        #: Groups with a member still awaited (compute thread only).
        self.waiting: set[KeptGroup] = set()
        self._timers: dict[Any, asyncio.TimerHandle] = {}
        self._jobs: set[asyncio.Future[Any]] = set()
        self._loop = asyncio.get_running_loop()

    # ---- compute thread ------------------------------------------------------------------------------

    def batch_fn(self, backend: ExpertBackend):  # -> TaggedBatchFn
        """A concatenated batch of kept forwards: one graph, one cache entry per member request."""

        def run(columns: list[torch.Tensor], tickets: list[KeepTicket]) -> list[torch.Tensor]:
            kept = backend.forward_kept(columns)
            group = KeptGroup(backend.uid, kept, [t.fid for t in tickets], [t.rows for t in tickets])
            share = kept.nbytes // len(tickets)
            now = time.monotonic()
            for index, ticket in enumerate(tickets):
                ticket.stored = self.cache.put(
                    (backend.uid, ticket.fid),
                    ticket.owner,
                    (group, index),
                    nbytes=share,
                    generation=kept.generation,
                    generation_bytes=backend.snapshot_bytes,
                    now=now,
                    group=backend.uid,
                )
            return [o.detach() for o in kept.outputs]

        return run

    def backward_arrived(
        self, backend: ExpertBackend, grads: list[torch.Tensor], fid: bytes, owner: bytes, waiter: Any
    ) -> KeptGroup | None:
        """One member's gradients; runs its group's backward if nobody else is awaited, else returns it."""
        group, index = self.cache.take((backend.uid, fid), owner, time.monotonic())
        group.arrive(index, grads, waiter)
        if self.step_delay > 0 and not group.ready(lambda other: (backend.uid, other) in self.cache):
            self.waiting.add(group)
            return group
        self.run_group(backend, group)
        return None

    def run_group(self, backend: ExpertBackend, group: KeptGroup) -> None:
        """One backward for the group's whole batch; answers its members; steps if nothing else is awaited."""
        if group.done:
            return
        group.done = True
        self.waiting.discard(group)
        for fid in group.absent_fids():  # too late now: their backward will re-send the inputs
            self.cache.discard((backend.uid, fid))
        answers: dict[int, Any]
        try:
            input_grads = backend.backward_kept(group.kept, group.full_grads(), group.arrived_samples)
            answers = dict(group.split(input_grads))
        except Exception as exc:
            logger.warning("%s: backward of %d kept requests failed: %s", backend.uid, len(group.grads), exc)
            answers = dict.fromkeys(group.grads, exc)
        group.kept.outputs.clear()  # free the graph's activations now
        # Step once no other forward made with these parameters awaits its backward: older forwards (whose
        # backward may never come, e.g. answers that arrived too late) must not hold every later step.
        due = (
            self.step_delay <= 0
            or not self.cache.holds_generation(group.kept.generation)
            or backend.accumulated_samples >= self.max_batch_size
        )
        if due:  # before answering: a step is memory-bound and runs worst beside the network work of replies
            self.step(backend)
        else:
            self._loop.call_soon_threadsafe(self.step_later, backend)
        for index, answer in answers.items():
            self._loop.call_soon_threadsafe(_settle, group.waiters[index], answer)

    def step(self, backend: ExpertBackend) -> None:
        try:
            backend.step_accumulated()
        except ValueError as exc:
            self.on_step_failed()
            logger.warning("%s: optimiser step skipped: %s", backend.uid, exc)

    def snapshot_in_use(self, generation: Any) -> bool:
        return self.cache.holds_generation(generation) or any(
            group.kept.generation == generation for group in self.waiting
        )

    # ---- event loop (waits bounded by step_delay) ------------------------------------------------------

    async def backward(
        self, backend: ExpertBackend, grads: list[torch.Tensor], fid: bytes, owner: bytes
    ) -> list[torch.Tensor]:
        """The input gradients of the kept forward `fid`, once its group's backward ran."""
        waiter: asyncio.Future[list[torch.Tensor]] = self._loop.create_future()
        group = await self.runtime.call(self.backward_arrived, backend, grads, fid, owner, waiter)
        if group is not None:  # other members are awaited: their backward, or the timer, runs it
            self._later(group, lambda: self.run_group(backend, group))
        return await waiter

    def _later(self, key: Any, job: Callable[[], None]) -> None:
        """Run `job` on the compute thread after `step_delay`, once per key until it ran."""
        if key in self._timers:
            return

        def fire() -> None:
            self._timers.pop(key, None)
            task = asyncio.ensure_future(self.runtime.call(job))
            self._jobs.add(task)
            task.add_done_callback(self._jobs.discard)

        self._timers[key] = self._loop.call_later(self.step_delay, fire)

    def step_later(self, backend: ExpertBackend) -> None:
        """Bound how long accumulated gradients wait for backwards that may never come."""
        self._later(("step", backend.uid), lambda: self.step(backend))

    async def finish(self, backends: dict[str, ExpertBackend]) -> None:
        """At shutdown: answer the members that sent their gradients and apply every accumulated step."""
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        for group in list(self.waiting):
            await self.runtime.call(self.run_group, backends[group.uid], group)
        for backend in backends.values():
            await self.runtime.call(self.step, backend)


def _settle(waiter: asyncio.Future[Any], answer: Any) -> None:
    if waiter.done():  # the caller gave up meanwhile
        return
    if isinstance(answer, BaseException):
        waiter.set_exception(answer)
    else:
        waiter.set_result(answer)

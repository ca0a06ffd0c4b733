"""Collaborative trainers average their parameters and optimiser statistics every few global steps.

Gradient averaging (`node_agent.training.collaborative`) keeps trainers in step only as long as they apply
exactly the same update from exactly the same state, and they drift apart anyway: with 8-bit gradients each
member's copy of the averaged gradient differs slightly, a trainer that found no group steps alone, and the
optimiser moments of a trainer that joined later start from zero. hivemind.Optimizer answers this with
`average_state_every`: every so many epochs the trainers run a second all-reduce over their parameters and
chosen optimiser statistics. `TrainingStateAverager` is that second all-reduce, with its own
`DecentralizedAverager` under `<run>-state`, grouping only trainers of one epoch (tag `s<epoch>`).

Background, not inline: a round costs a matchmaking wait (up to `matchmaking_time`) plus moving about three
times the parameters; inline, every trainer would stall for that every `average_state_every` steps, and a
vanished partner would stall it for the whole timeout. So `begin` snapshots the state (under the trainer's
lock) and the round runs on the caller's loop while training goes on; `apply_finished`, called by the
training thread at a safe point (after `backward()`, before the optimiser step: never between a forward and
its backward, whose saved parameters must not change in place), applies the delta rule:
`state += average - snapshot`, so the steps taken while the round ran are kept on top of the average.

Weights: every trainer counts once (weight 1). Trainers apply the same averaged gradients, so each copy is an
equally good estimate of the one shared model; weighting by samples would only let the fastest trainer's
compression noise dominate.

Compression: parameters and first moments travel in `compression` (float16 by default); Adam's second
moment (`exp_avg_sq`) travels exact, since float16 flushes values below ~6e-8 to zero and Adam would then
divide by `eps` alone (the expert replicas make the same choice). A failed round (no group, a silent or
refused partner, timeout, an average implausibly far from our own state) leaves the local state as it was,
is logged and counted. A statistic the optimiser has not created yet (no step taken on that parameter) is
contributed as zeros, as the expert replicas do, and not applied.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from node_agent.averaging.aggregation import plausible_average
from node_agent.averaging.averager import AveragingError, AveragingOptions, DecentralizedAverager, RoundReport
from node_agent.tensor_codec import Compression

logger = logging.getLogger(__name__)

#: The statistic that must travel exact (see the module docstring).
SECOND_MOMENT = "exp_avg_sq"


@dataclass(slots=True)
class StateAveragingConfig:
    prefix: str
    #: Optimiser statistics averaged with the parameters (each shaped like its parameter).
    statistics: tuple[str, ...] = ("exp_avg", "exp_avg_sq")
    compression: Compression = Compression.FLOAT16
    max_group_size: int = 16
    matchmaking_time: float = 2.0
    timeout: float = 30.0
    credential: str | None = None
    credentials: Any = None


@dataclass(slots=True)
class _Pending:
    future: concurrent.futures.Future[RoundReport]
    epoch: int
    #: The values we contributed, per averaged tensor (the delta rule's base).
    snapshot: list[torch.Tensor]
    #: Which averaged tensors exist locally (an optimiser statistic may not exist yet): applied only these.
    present: list[bool]
    stale: bool = False


class TrainingStateAverager:
    """Parameters and optimiser statistics of one trainer, averaged now and then with the other trainers'."""

    def __init__(
        self,
        parameters: Sequence[torch.nn.Parameter],
        optimizer: torch.optim.Optimizer,
        caller: Any,
        lock: threading.Lock,
        config: StateAveragingConfig,
    ) -> None:
        self.parameters = list(parameters)
        self.optimizer = optimizer
        self.caller = caller
        self.lock = lock
        self.config = config
        self.rounds_completed = 0
        self.rounds_failed = 0
        self.averager: DecentralizedAverager | None = None
        self._pending: _Pending | None = None
        #: (parameter index, statistic name or None for the parameter itself), in averaging order.
        self._layout: list[tuple[int, str | None]] = [(i, None) for i in range(len(self.parameters))] + [
            (i, name) for name in config.statistics for i in range(len(self.parameters))
        ]

    async def start(self) -> None:
        """Create the averager (on the caller's loop)."""
        compressions = [
            Compression.NONE if name == SECOND_MOMENT else self.config.compression for _, name in self._layout
        ]
        options = AveragingOptions(
            target_group_size=self.config.max_group_size,
            min_group_size=2,  # averaging state alone changes nothing
            matchmaking_time=self.config.matchmaking_time,
            compression=compressions,
            credential=self.config.credential,
            credentials=self.config.credentials,
            register_validator=False,  # the caller's DHT node has the project's validators
        )
        work = [torch.zeros_like(self.parameters[i], dtype=torch.float32) for i, _ in self._layout]
        self.averager = await DecentralizedAverager.create(
            self.caller.dht, self.caller.pool, self.config.prefix, work, options
        )

    async def shutdown(self) -> None:
        if self._pending is not None:
            self._pending.future.cancel()
        if self.averager is not None:
            await self.averager.shutdown()

    @property
    def in_progress(self) -> bool:
        return self._pending is not None

    # ---- the training thread's side ------------------------------------------------------------------

    def begin(self, epoch: int, group_size: int) -> bool:
        """Snapshot the state and start a round in the background with the trainers at `epoch`; False if a
        round is still running (hivemind skips the next one too)."""
        if self._pending is not None or self.averager is None:
            return False
        averager = self.averager
        snapshot, present = [], []
        with self.lock, torch.no_grad():
            for work, (index, name) in zip(averager.tensors, self._layout, strict=True):
                value = self._local(index, name)
                present.append(value is not None)
                work.copy_(value if value is not None else torch.zeros_like(work))
                snapshot.append(work.clone())
        averager.options.target_group_size = max(2, min(group_size, self.config.max_group_size))
        future = self.caller.run(averager.step(weight=1.0, timeout=self.config.timeout, tag=f"s{epoch}"))
        self._pending = _Pending(future, epoch, snapshot, present)
        logger.debug("epoch %d: averaging state with up to %d trainer(s) (background)", epoch, group_size)
        return True

    def discard(self) -> None:
        """The local state was replaced (loaded from a peer): the running round's result no longer fits."""
        if self._pending is not None:
            self._pending.stale = True

    def apply_finished(self) -> bool:
        """If the background round ended, apply its result (training thread, at a safe point); True if
        state changed."""
        pending = self._pending
        if pending is None or not pending.future.done():
            return False
        self._pending = None
        return self._finish(pending)

    def wait(self, timeout: float) -> bool:
        """Wait (bounded) for the running round and apply it; True if state changed."""
        pending = self._pending
        if pending is None:
            return False
        try:
            concurrent.futures.wait([pending.future], timeout=timeout)
        finally:
            if not pending.future.done():
                pending.future.cancel()
        self._pending = None
        return self._finish(pending)

    # ---- internals -----------------------------------------------------------------------------------

    def _local(self, index: int, name: str | None) -> torch.Tensor | None:
        parameter = self.parameters[index]
        if name is None:
            return parameter.detach()
        value = self.optimizer.state.get(parameter, {}).get(name)
        if not isinstance(value, torch.Tensor) or value.shape != parameter.shape:
            return None
        return value

    def _finish(self, pending: _Pending) -> bool:
        try:
            report = pending.future.result(timeout=0)
        except (AveragingError, concurrent.futures.CancelledError, asyncio.CancelledError) as exc:
            return self._failed(pending.epoch, f"no group: {exc or 'cancelled'}")
        except Exception as exc:  # a round never breaks training: log it, keep the local state
            logger.warning("epoch %d: averaging state failed: %r", pending.epoch, exc)
            return self._failed(pending.epoch, repr(exc))
        contributors = report.group_size - len(report.silent) - len(report.refused)
        if contributors < 2:
            return self._failed(pending.epoch, f"{contributors} contributor(s) of {report.group_size}")
        if pending.stale:
            return self._failed(pending.epoch, "the local state was replaced while the round ran")
        assert self.averager is not None
        implausible = self._implausible(pending)
        if implausible is not None:
            return self._failed(pending.epoch, f"implausible average of tensor {implausible}")
        with self.lock, torch.no_grad():
            for work, base, present, (index, name) in zip(
                self.averager.tensors, pending.snapshot, pending.present, self._layout, strict=True
            ):
                local = self._local(index, name)
                if not present or local is None:
                    continue
                local.add_((work - base).to(local.dtype))  # the delta rule: keep the steps taken meanwhile
                if name == SECOND_MOMENT:
                    local.clamp_(min=0.0)
        self.rounds_completed += 1
        logger.info(
            "epoch %d: averaged parameters and optimiser statistics with %d trainer(s) (%s)",
            pending.epoch,
            contributors,
            "complete" if report.complete else "partial",
        )
        return True

    def _implausible(self, pending: _Pending) -> int | None:
        """The first averaged tensor too far from what we contributed, if any. The engine checks the answers
        of other reducers, not the part we reduced ourselves: in a group of two, a partner sending huge
        (finite) values would pull that part halfway to them, so the whole result is checked before any of
        it is applied."""
        assert self.averager is not None
        factor = self.averager.options.plausibility_factor
        for i, (work, base, present) in enumerate(
            zip(self.averager.tensors, pending.snapshot, pending.present, strict=True)
        ):
            if present and not plausible_average(work, base, factor):
                return i
        return None

    def _failed(self, epoch: int, reason: str) -> bool:
        self.rounds_failed += 1
        logger.info("epoch %d: state averaging failed (%s); keeping the local state", epoch, reason)
        return False

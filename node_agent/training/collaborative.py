"""Collaborative training: trainers of one project average their own (non-expert) gradients as
hivemind.Optimizer does, so that N trainers with batch B train like one with a batch of `target_batch_size`.

Each trainer accumulates gradients over its local batches and publishes its progress (epoch = global steps
done, samples accumulated since, samples/s) as a signed DHT record under `avg:progress:<run>`
(`node_agent.averaging.records.Progress`). When the samples of all trainers at its epoch (extrapolated from
their measured rates) reach `target_batch_size`, or another trainer already moved to the next epoch, it
averages its mean gradient with the others (`DecentralizedAverager`, weighted by samples; the group is
everyone live at that epoch) and applies its optimiser step: every trainer applies the same averaged
gradient, so parameters stay in step. If no group forms in time it steps on its own gradient.

A trainer that falls behind (others stepped without it), or that starts while others already trained (a
newcomer), first loads the newest state (parameters, optimiser moments, epoch) from the trainer with the
highest epoch, falling back to the next (`node_agent.averaging.state_download`; every trainer is a donor
capped at two concurrent downloads).

Every `average_state_every` global steps the trainers of one epoch also average their parameters and
optimiser statistics (`node_agent.training.state_averaging`, in the background, applied with the delta
rule at the next `step`), so copies that drifted apart (8-bit gradients, a solo step, late moments) realign
without waiting to fall behind.

The synchronous training loop calls `step(samples)` after `loss.backward()`; DHT and averaging run on the
`ExpertCaller`'s event loop (`caller.run`). Progress is published and read by a background task on that
loop, so a local step never waits for the DHT.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from node_agent.averaging.averager import AveragingError, AveragingOptions, DecentralizedAverager
from node_agent.averaging.records import PROGRESS_PREFIX, MessageError, Progress, own_relays
from node_agent.averaging.state_download import (
    Donor,
    DownloadOptions,
    StateDonor,
    StateSchema,
    StateSnapshot,
    download_newest,
)
from node_agent.dht.api import DHTError, owner_subkey, subkey_owner
from node_agent.tensor_codec import Compression, TensorSchema
from node_agent.training.state_averaging import StateAveragingConfig, TrainingStateAverager

logger = logging.getLogger(__name__)

STATE_ROUTE = "state."


@dataclass(slots=True)
class CollaborativeConfig:
    run: str = "trainer"
    #: Samples all trainers together accumulate per global step.
    target_batch_size: int = 256
    max_group_size: int = 16
    matchmaking_time: float = 2.0
    average_timeout: float = 30.0
    progress_period: float = 0.5
    #: Progress records expire this long after their last refresh (a trainer that left drops out).
    progress_ttl: float = 10.0
    #: Gradients travel 8-bit block-wise (the issue's choice for gradients); `none` is exact.
    compression: Compression = Compression.BLOCKWISE_8BIT
    load_state_timeout: float = 60.0
    #: Before the first step, wait (up to `wait_timeout`) until this many other trainers are live, so that a
    #: run started on several machines begins together instead of one racing ahead alone.
    wait_for_peers: int = 0
    wait_timeout: float = 60.0
    #: Every this many global steps, average parameters and optimiser statistics too (0: never).
    average_state_every: int = 10
    #: Parameters and first moments travel in this (second moments exact: `state_averaging`).
    state_compression: Compression = Compression.FLOAT16
    credential: str | None = None
    credentials: Any = None


class CollaborativeOptimizer:
    def __init__(
        self,
        parameters: Sequence[torch.nn.Parameter],
        optimizer: torch.optim.Optimizer,
        caller: Any,
        config: CollaborativeConfig,
    ) -> None:
        self.parameters = list(parameters)
        self.optimizer = optimizer
        self.caller = caller
        self.config = config
        self.epoch = 0
        self.local_samples = 0
        self.local_batches = 0
        self.global_steps = 0
        self.solo_steps = 0
        self.loaded_states = 0
        #: Gradient rounds that averaged with another trainer / that expected to and did not.
        self.grad_rounds_completed = 0
        self.grad_rounds_failed = 0
        self.grads = [torch.zeros_like(p, dtype=torch.float32) for p in self.parameters]
        self._lock = threading.Lock()  # held while parameters or optimiser state change
        self._peers: dict[bytes, Progress] = {}
        self._rate = 0.0
        self._batch = 0
        self._rate_window: tuple[float, int] = (time.monotonic(), 0)
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Future[Any] | None = None
        self.averager: DecentralizedAverager | None = None
        self.donor = StateDonor(self._snapshot)
        self.state_averager = TrainingStateAverager(
            self.parameters,
            optimizer,
            caller,
            self._lock,
            StateAveragingConfig(
                prefix=f"{config.run}-state",
                compression=config.state_compression,
                max_group_size=config.max_group_size,
                matchmaking_time=config.matchmaking_time,
                timeout=config.average_timeout,
                credential=config.credential,
                credentials=config.credentials,
            ),
        )
        self.caller.run(self._start()).result(30)

    # ---- lifecycle (on the caller's loop) ------------------------------------------------------------

    async def _start(self) -> None:
        options = AveragingOptions(
            target_group_size=self.config.max_group_size,
            min_group_size=1,
            matchmaking_time=self.config.matchmaking_time,
            compression=self.config.compression,
            credential=self.config.credential,
            credentials=self.config.credentials,
            register_validator=False,  # the caller's DHT node has the project's validators (`avg:` included)
        )
        self.averager = await DecentralizedAverager.create(
            self.caller.dht, self.caller.pool, f"{self.config.run}-grads", self.grads, options
        )
        if self.config.average_state_every > 0:
            await self.state_averager.start()
        self.caller.pool.add_route(STATE_ROUTE, self.donor.handle)
        self._wake = asyncio.Event()
        self._task = asyncio.ensure_future(self._progress_loop())

    def join(self) -> bool:
        """Read the others' progress (waiting for `wait_for_peers` of them) and, if they already trained,
        load the newest state; True if a state was loaded."""
        deadline = time.monotonic() + self.config.wait_timeout
        while True:
            try:
                self.caller.run(self._publish()).result(30)
                self.caller.run(self._read_peers()).result(30)
            except (DHTError, concurrent.futures.TimeoutError) as exc:
                logger.info("collaborative: could not read the others' progress yet: %s", exc)
            if len(self.peers()) >= self.config.wait_for_peers or time.monotonic() >= deadline:
                break
            time.sleep(self.config.progress_period)
        return self.load_state()

    def close(self) -> None:
        async def stop() -> None:
            if self._task is not None:
                self._task.cancel()
            await self.state_averager.shutdown()
            if self.averager is not None:
                await self.averager.shutdown()
            self.caller.pool.remove_route(STATE_ROUTE)

        self.caller.run(stop()).result(10)

    def averaging_rounds(self) -> tuple[int, int]:
        """(completed, failed) averaging rounds, gradients and state together (the heartbeat's counters)."""
        return (
            self.grad_rounds_completed + self.state_averager.rounds_completed,
            self.grad_rounds_failed + self.state_averager.rounds_failed,
        )

    @property
    def key(self) -> str:
        return f"{PROGRESS_PREFIX}{self.config.run}"

    # ---- progress ------------------------------------------------------------------------------------

    def _own_progress(self) -> Progress:
        return Progress(
            self.epoch,
            self.local_samples,
            self._rate,
            time.time(),
            self.caller.dht.endpoint,
            self.config.credential,
            self._batch,
            own_relays(self.caller.dht),
        )

    async def _progress_loop(self) -> None:
        assert self._wake is not None
        while True:
            try:
                await self._publish()
                await self._read_peers()
            except DHTError as exc:
                logger.info("collaborative progress: %s", exc)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.config.progress_period)

    def _refresh(self, publish: bool = False) -> None:
        """Publish (optionally) and re-read progress now, from the training thread (bounded wait)."""

        async def refresh() -> None:
            if publish:
                await self._publish()
            await self._read_peers()

        try:
            self.caller.run(refresh()).result(5.0)
        except (DHTError, concurrent.futures.TimeoutError) as exc:
            logger.info("collaborative: refreshing progress failed: %s", exc)

    def _nudge(self) -> None:
        """Publish our progress now (from the training thread)."""
        if self._wake is not None:
            self.caller.run(self._set_wake())

    async def _set_wake(self) -> None:
        if self._wake is not None:
            self._wake.set()

    async def _publish(self) -> None:
        progress = self._own_progress()
        await self.caller.dht.store(
            self.key,
            progress.to_wire(),
            time.time() + self.config.progress_ttl,
            subkey=owner_subkey("trainer", self.caller.dht.node_id),
        )

    async def _read_peers(self) -> None:
        found = await self.caller.dht.get(self.key, latest=True)
        peers: dict[bytes, Progress] = {}
        me = self.caller.dht.node_id
        for subkey, item in found.items():
            owner = subkey_owner(subkey)
            if owner is None or owner != item.owner or owner == me:
                continue
            try:
                peers[owner] = Progress.from_wire(item.value, owner)
            except MessageError:
                continue
        with self._lock:
            self._peers = peers

    def peers(self) -> dict[bytes, Progress]:
        with self._lock:
            return dict(self._peers)

    def global_samples(self, now: float | None = None) -> tuple[int, int, int]:
        """(samples towards this epoch's step, trainers taking it incl. us, the highest epoch seen)."""
        now = time.time() if now is None else now
        total, count, highest = self.local_samples, 1, self.epoch
        for progress in self.peers().values():
            highest = max(highest, progress.epoch)
            # a trainer takes a global step only after a local batch: it brings at least that one
            if progress.epoch == self.epoch:
                late = max(0.0, min(now - progress.time, 2 * self.config.progress_period))
                total += max(int(progress.samples + progress.samples_per_s * late), progress.batch)
                count += 1
            elif progress.epoch == self.epoch - 1:  # it took the last step with us, its record lags
                total += progress.batch
                count += 1
        return total, count, highest

    # ---- the training loop's side --------------------------------------------------------------------

    def step(self, samples: int) -> bool:
        """After `backward()` of a local batch: accumulate; on the global batch, average and step.
        Returns True if an optimiser step happened."""
        self.state_averager.apply_finished()  # after backward(): parameters may change in place now
        self.local_samples += samples
        self.local_batches += 1
        self._measure(samples)
        self._batch = samples
        total, count, highest = self.global_samples()
        if count < 1 + len(self.peers()) and (total >= self.config.target_batch_size or highest > self.epoch):
            self._refresh()  # about to step or load without a live trainer whose record looks stale: re-read
            total, count, highest = self.global_samples()
        if highest > self.epoch and self.load_state():
            return False  # others stepped without us: their state replaces our stale one and gradients
        if total < self.config.target_batch_size:
            self._nudge()
            return False
        logger.debug("epoch %d: %d samples from %d trainer(s): global step", self.epoch, total, count)
        self._global_step(count)
        return True

    def _measure(self, samples: int) -> None:
        started, counted = self._rate_window
        counted += samples
        elapsed = time.monotonic() - started
        if elapsed >= 1.0:
            self._rate = counted / elapsed
            self._rate_window = (time.monotonic(), 0)
        else:
            self._rate_window = (started, counted)

    def _global_step(self, group: int) -> None:
        assert self.averager is not None
        with torch.no_grad():
            for buffer, parameter in zip(self.grads, self.parameters, strict=True):
                if parameter.grad is None:
                    buffer.zero_()
                else:
                    buffer.copy_(parameter.grad / max(1, self.local_batches))
        self.averager.options.target_group_size = max(1, min(group, self.config.max_group_size))
        try:
            report = self.caller.run(
                self.averager.step(
                    weight=float(self.local_samples),
                    timeout=self.config.average_timeout,
                    tag=f"e{self.epoch}",
                )
            ).result(self.config.average_timeout + 10)
            averaged = report.group_size > 1
            self.grad_rounds_completed += 1 if averaged else 0
            self.grad_rounds_failed += 1 if not averaged and group > 1 else 0
            logger.info(
                "epoch %d: averaged gradients with %d trainer(s) (%s)",
                self.epoch,
                report.group_size,
                "complete" if report.complete else "partial",
            )
        except (AveragingError, concurrent.futures.TimeoutError) as exc:
            averaged = False
            self.grad_rounds_failed += 1
            logger.info("epoch %d: no group (%s); stepping on our own gradient", self.epoch, exc)
        with self._lock, torch.no_grad():
            for buffer, parameter in zip(self.grads, self.parameters, strict=True):
                if parameter.grad is None:
                    parameter.grad = buffer.clone().to(parameter.dtype)
                else:
                    parameter.grad.copy_(buffer)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=False)
            self.epoch += 1
        self.global_steps += 1
        self.solo_steps += 0 if averaged else 1
        self.local_samples = 0
        self.local_batches = 0
        self._refresh(publish=True)  # the others should see our new epoch before they decide
        self._maybe_average_state()

    def _maybe_average_state(self) -> None:
        """Every `average_state_every` epochs, start a state round with the trainers at (or just reaching)
        this epoch; alone, there is nobody to average with."""
        every = self.config.average_state_every
        if every <= 0 or self.epoch % every != 0 or self.state_averager.in_progress:
            return
        others = sum(1 for p in self.peers().values() if self.epoch - 1 <= p.epoch <= self.epoch)
        if others:
            self.state_averager.begin(self.epoch, 1 + others)

    # ---- state download ------------------------------------------------------------------------------

    async def _snapshot(self, key: str) -> StateSnapshot | None:
        if key != self.config.run:
            return None
        return await asyncio.to_thread(self._snapshot_now)

    def _snapshot_now(self) -> StateSnapshot:
        with self._lock, torch.no_grad():
            return StateSnapshot(self.epoch, self._state_tensors())

    def _state_tensors(self) -> dict[str, torch.Tensor]:
        tensors = {f"param.{i}": p.detach().clone() for i, p in enumerate(self.parameters)}
        for i, p in enumerate(self.parameters):
            for name, value in self.optimizer.state.get(p, {}).items():
                if isinstance(value, torch.Tensor):
                    tensors[f"optim.{i}.{name}"] = value.detach().clone()
        return tensors

    def _schema(self) -> StateSchema:
        allowed: dict[str, tuple[TensorSchema, ...]] = {}
        for i, p in enumerate(self.parameters):
            shape = TensorSchema("float32", tuple(p.shape))
            allowed[f"param.{i}"] = (shape,)
            allowed[f"optim.{i}.exp_avg"] = (shape,)
            allowed[f"optim.{i}.exp_avg_sq"] = (shape,)
            allowed[f"optim.{i}.step"] = (TensorSchema("float32", ()),)
        return StateSchema(allowed, frozenset(f"param.{i}" for i in range(len(self.parameters))))

    def load_state(self) -> bool:
        """Load the newest state from the trainers ahead of us; True if one was loaded."""
        peers = {node: p for node, p in self.peers().items() if p.epoch > self.epoch}
        if not peers:
            return False
        loaded = self.caller.run(self._download(peers)).result(self.config.load_state_timeout + 10)
        if loaded is None:
            logger.warning("could not load the newest state from %d trainer(s) ahead of us", len(peers))
            return False
        self.state_averager.discard()  # a running state round's delta would apply to the replaced state
        with self._lock, torch.no_grad():
            for i, p in enumerate(self.parameters):
                p.copy_(loaded.tensors[f"param.{i}"])
                state = {
                    name.split(".", 2)[2]: value
                    for name, value in loaded.tensors.items()
                    if name.startswith(f"optim.{i}.")
                }
                if state:
                    self.optimizer.state[p] = state
            self.optimizer.zero_grad(set_to_none=False)
            self.epoch = loaded.step
        self.local_samples = self.local_batches = 0
        self.loaded_states += 1
        logger.info("loaded the state of epoch %d from %s", loaded.step, loaded.donor)
        self._nudge()
        return True

    async def _download(self, peers: dict[bytes, Progress]) -> Any:
        donors = []
        for node_id, progress in peers.items():

            async def call(method: str, body: Any, timeout: float, node=node_id, peer=progress) -> Any:
                link = await self.caller.pool.connect(node, peer.endpoint, timeout, peer.relays)
                return await link.rpc.call(method, body, timeout=timeout)

            donors.append(Donor(node_id.hex()[:8], progress.epoch, call))
        options = DownloadOptions(compression=Compression.NONE.value, max_drift=1_000_000)
        return await asyncio.wait_for(
            download_newest(donors, self.config.run, self._schema(), options), self.config.load_state_timeout
        )


def collaborate(
    model: torch.nn.Module,
    trainer: Any,
    caller: Any,
    config: CollaborativeConfig,
    on_collaborative: Callable[[CollaborativeOptimizer], None] | None = None,
) -> CollaborativeOptimizer:
    """Make `trainer` (a classifier's or a language model's; after any resume) step collaboratively on the
    model's own trainable parameters. A newcomer loads the newest state before its first step."""
    own = [p for p in model.parameters() if p.requires_grad]
    collaborative = CollaborativeOptimizer(own, trainer.optimizer, caller, config)
    collaborative.join()
    trainer.collaborative = collaborative
    if on_collaborative is not None:
        on_collaborative(collaborative)
    return collaborative


def record_collaboration(result: Any, collaborative: CollaborativeOptimizer, start_epoch: int) -> None:
    """Copy what collaboration did into a training result (both trainers' results share these fields)."""
    result.global_steps = collaborative.global_steps
    result.averaged_steps = collaborative.global_steps - collaborative.solo_steps
    result.start_epoch = start_epoch
    result.state_rounds_completed = collaborative.state_averager.rounds_completed
    result.state_rounds_failed = collaborative.state_averager.rounds_failed

"""Expert replicas: servers hosting the same uid share one state instead of training unrelated copies.

* Donor: every server answers `state.*` calls (`node_agent.averaging.state_download`) with a consistent
  snapshot of a hosted expert, taken on the compute thread between optimiser steps.
* Takeover: before a server announces a uid, it downloads the newest state from a live replica (ranked by
  the steps their `info` reports); with no live replica it asks `fallback(uid)` (the project's last
  exported checkpoint), and only then starts from its own initial weights.
* Averaging: every `period` seconds, for each hosted uid with another live replica, the server takes a
  snapshot of the expert's parameters and optimiser moments and runs one all-reduce round with the uid's
  other replicas (`node_agent.averaging.DecentralizedAverager`, group key `expert.<uid>`). Parameters
  become the common starting point plus every replica's update since it (see `ReplicaSync._average`),
  moments their mean; an idle replica contributes no update, so it never drags a busy one back. The
  result is applied plus whatever the expert learnt while the round ran. A replica that vanishes leaves
  the others holding at most `period` seconds less training than it had.

Takeover downloads go through the hostile-donor checks of every state download (wrong shapes, non-finite
or huge values, a lying step: the next replica is tried); averaging rounds through the engine's screening
(non-finite or outlying values exclude and penalise the sender).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from node_agent.averaging.averager import AveragingError, AveragingOptions, DecentralizedAverager
from node_agent.averaging.state_download import (
    Donor,
    DownloadOptions,
    StateDonor,
    StateDownloadError,
    StateSnapshot,
    download_newest,
    entries_of,
)
from node_agent.dht.api import DHTNodeAPI
from node_agent.moe.announce import live_replicas, uid_key
from node_agent.moe.api import ExpertHandle
from node_agent.moe.server.backend import ExpertBackend
from node_agent.moe.server.runtime import BatchingRuntime
from node_agent.moe.server.state import (
    MODULE_PREFIX,
    OPTIM_PREFIX,
    apply_expert_state,
    expert_state,
    expert_state_schema,
)
from node_agent.rtc.pool import ConnectionPool
from node_agent.tensor_codec import Compression

logger = logging.getLogger(__name__)

INFO_TIMEOUT = 5.0
#: Downloaded state from this source: "replica <node id>", "checkpoint", or absent (own initial weights).
Fallback = Callable[[str], Awaitable[tuple[dict[str, torch.Tensor], int] | None]]


@dataclass(slots=True)
class ReplicaStats:
    rounds_completed: int = 0
    rounds_failed: int = 0
    #: uid -> where its starting state came from ("replica <id>", "checkpoint", "initial").
    started_from: dict[str, str] = field(default_factory=dict)
    #: uid -> monotonic time of the last successful averaging with another replica.
    last_averaged: dict[str, float] = field(default_factory=dict)


class ReplicaFinder:
    """Live replicas of uids (from the DHT) and their steps (from `info`), reached through `pool`."""

    def __init__(self, dht: DHTNodeAPI, pool: ConnectionPool | None = None) -> None:
        self.dht = dht
        self.pool = pool

    async def other_replicas(self, uids: Sequence[str]) -> dict[str, list[ExpertHandle]]:
        found = await self.dht.get_many([uid_key(uid) for uid in uids], latest=True)
        me = self.dht.node_id
        return {
            uid: [h for h in live_replicas(uid, found.get(uid_key(uid), {})) if h.node_id != me]
            for uid in uids
        }

    def _call(self, handle: ExpertHandle) -> Callable[[str, Any, float], Awaitable[Any]]:
        async def call(method: str, body: Any, timeout: float) -> Any:
            assert self.pool is not None
            async with asyncio.timeout(timeout):
                link = await self.pool.connect(handle.node_id, handle.endpoint, timeout, handle.relays)
                return await link.rpc.call(method, body, timeout)

        return call

    async def donors(self, handles: Sequence[ExpertHandle]) -> list[Donor]:
        """Ask each replica's `info` for its step (in parallel); unreachable ones are left out."""

        async def probe(handle: ExpertHandle) -> Donor | None:
            try:
                info = await self._call(handle)("info", {"uid": handle.uid}, INFO_TIMEOUT)
            except Exception as exc:
                logger.info("replica %s of %s did not answer info: %s", _short(handle), handle.uid, exc)
                return None
            step = info.get("steps") if isinstance(info, dict) else None
            if type(step) is not int or step < 0:
                return None
            return Donor(_short(handle), step, self._call(handle))

        found = await asyncio.gather(*(probe(h) for h in handles))
        return [d for d in found if d is not None]


class ReplicaSync:
    """Donor, takeover and periodic averaging for one server's experts."""

    def __init__(
        self,
        dht: DHTNodeAPI,
        backends: dict[str, ExpertBackend],
        runtime: BatchingRuntime,
        *,
        period: float = 5.0,
        max_donor_sessions: int = 2,
        fallback: Fallback | None = None,
    ) -> None:
        self.dht = dht
        self.backends = backends
        self.runtime = runtime
        self.period = period
        self.fallback = fallback
        self.finder = ReplicaFinder(dht)
        self.donor = StateDonor(self._snapshot, max_sessions=max_donor_sessions)
        self.stats = ReplicaStats()
        self._averagers: dict[str, DecentralizedAverager] = {}
        #: uid -> its parameters as last averaged (the common state the next update is measured from).
        self._base: dict[str, list[torch.Tensor]] = {}

    async def _snapshot(self, key: str) -> StateSnapshot | None:
        backend = self.backends.get(key)
        if backend is None:
            return None
        return await self.runtime.call(lambda: expert_state(backend))

    # ---- takeover ------------------------------------------------------------------------------------

    async def take_over(self) -> dict[str, str]:
        """Before announcing: load each hosted expert's newest state from a live replica or the fallback."""
        try:
            replicas = await self.finder.other_replicas(list(self.backends))
        except Exception as exc:
            logger.warning("could not look up replicas before announcing: %s", exc)
            replicas = {}
        for uid, backend in self.backends.items():
            source = "initial"
            got = None
            # Only a state newer than ours (a restored checkpoint may be): a fresh one takes any.
            donors = [
                d
                for d in await self.finder.donors(replicas.get(uid, []))
                if d.step > backend.steps or not backend.steps
            ]
            if donors:
                got = await download_newest(donors, uid, expert_state_schema(backend), DownloadOptions())
            if got is not None:
                await self._apply(backend, got.tensors, got.step)
                source = f"replica {got.donor}"
                names, values = await self.runtime.call(lambda b=backend: _averaged_tensors(b))
                # The replicas' common state: our first round adds only what we learn from here on.
                self._base[uid] = [
                    v for n, v in zip(names, values, strict=True) if n.startswith(MODULE_PREFIX)
                ]
            elif self.fallback is not None:
                restored = await self._from_fallback(uid, backend)
                source = "checkpoint" if restored else source
            self.stats.started_from[uid] = source
            logger.info("%s starts from %s (step %d)", uid, source, backend.steps)
        return dict(self.stats.started_from)

    async def _from_fallback(self, uid: str, backend: ExpertBackend) -> bool:
        assert self.fallback is not None
        try:
            found = await self.fallback(uid)
        except Exception as exc:
            logger.warning("no checkpoint for %s: %s", uid, exc)
            return False
        if found is None:
            return False
        tensors, step = found
        if backend.steps and step <= backend.steps:
            return False  # our own checkpoint is newer
        try:  # an export file may come from elsewhere: same checks as a download
            expert_state_schema(backend).check(entries_of(tensors))
            for name, value in tensors.items():
                if value.is_floating_point() and not bool(torch.isfinite(value).all()):
                    raise StateDownloadError(f"{name}: NaN or infinite values")
        except StateDownloadError as exc:
            logger.warning("the checkpoint's %s does not fit: %s", uid, exc)
            return False
        await self._apply(backend, tensors, step)
        return True

    async def _apply(self, backend: ExpertBackend, tensors: dict[str, torch.Tensor], step: int) -> None:
        await self.runtime.call(lambda: apply_expert_state(backend, tensors, step))

    # ---- averaging -----------------------------------------------------------------------------------

    async def run(self) -> None:
        """The averaging loop (run under the server's supervisor)."""
        try:
            while True:
                await asyncio.sleep(self.period)
                await self.average_once()
        finally:
            for averager in self._averagers.values():
                await averager.shutdown()

    async def average_once(self) -> int:
        """One round for every hosted uid that has another live replica (all uids at once); returns how
        many averaged with at least one other replica."""
        replicas = await self.finder.other_replicas(list(self.backends))
        shared = [uid for uid, handles in replicas.items() if handles]
        done = await asyncio.gather(*(self._average(uid) for uid in shared))
        return sum(done)

    async def _average(self, uid: str) -> bool:
        """One all-reduce round with the uid's other replicas (`node_agent.averaging`).

        Replicas share a trainer's batches, each taking its own optimiser steps on its share; a plain mean
        of their parameters would keep only the average of their progress (half of it with two replicas).
        So each replica also contributes its *update* since the last common state, and the new common
        state is `mean(states) + (n - 1) * mean(updates)`: the common starting point plus every replica's
        update, as if one server had taken all the steps. Optimiser moments are plain means. The result
        is applied with whatever the expert learnt while the round ran added on top.
        """
        backend = self.backends[uid]
        names, before = await self.runtime.call(lambda: _averaged_tensors(backend))
        params = [i for i, name in enumerate(names) if name.startswith(MODULE_PREFIX)]
        base = self._base.get(uid)
        if base is None or len(base) != len(params):
            base = [before[i] for i in params]  # no common state yet: no update to add
        updates = [before[i] - b for i, b in zip(params, base, strict=True)]
        averager = await self._averager(uid, names, [*before, *updates])
        if averager is None:
            self.stats.rounds_failed += 1
            return False
        for work, value in zip(averager.tensors, [*before, *updates], strict=True):
            work.copy_(value)
        try:
            report = await averager.step(weight=1.0, timeout=3 * averager.options.matchmaking_time + 5.0)
        except AveragingError as exc:
            logger.info("averaging %s found no group: %s", uid, exc)
            self.stats.rounds_failed += 1
            return False
        except Exception as exc:
            logger.warning("averaging %s failed: %s", uid, exc)
            self.stats.rounds_failed += 1
            return False
        contributors = report.group_size - len(report.silent) - len(report.refused)
        if contributors < 2:
            self.stats.rounds_failed += 1
            return False
        averaged = [t.clone() for t in averager.tensors[: len(names)]]
        mean_updates = averager.tensors[len(names) :]
        for i, update in zip(params, mean_updates, strict=True):
            averaged[i] += (contributors - 1) * update
        self._base[uid] = [averaged[i].clone() for i in params]
        await self.runtime.call(lambda: _apply_average(backend, names, before, averaged))
        self.stats.rounds_completed += 1
        self.stats.last_averaged[uid] = time.monotonic()
        return True

    async def _averager(
        self, uid: str, names: list[str], like: list[torch.Tensor]
    ) -> DecentralizedAverager | None:
        averager = self._averagers.get(uid)
        shapes = [tuple(t.shape) for t in like]
        if averager is not None and [tuple(t.shape) for t in averager.tensors] == shapes:
            return averager
        if averager is not None:
            await averager.shutdown()
        if self.finder.pool is None:
            return None
        options = AveragingOptions(
            target_group_size=4,
            min_group_size=2,
            matchmaking_time=min(5.0, max(1.0, self.period)),
            compression=[_compression(name) for name in names]
            + [Compression.FLOAT16] * (len(like) - len(names)),
        )
        averager = await DecentralizedAverager.create(
            self.dht, self.finder.pool, f"expert.{uid}", [t.clone() for t in like], options
        )
        self._averagers[uid] = averager
        return averager


def _compression(name: str) -> Compression:
    """Parameters travel in float16; optimiser moments exact (Adam's second moment underflows in fp16)."""
    return Compression.NONE if name.startswith(OPTIM_PREFIX) else Compression.FLOAT16


def _averaged_tensors(backend: ExpertBackend) -> tuple[list[str], list[torch.Tensor]]:
    """What replicas average, in a fixed order every replica agrees on: the module's floating tensors
    and, per parameter, the optimiser's moments (zeros where this replica has not stepped yet). Compute
    thread only."""
    snapshot = expert_state(backend)
    names = sorted(
        n for n, t in snapshot.tensors.items() if n.startswith(MODULE_PREFIX) and t.is_floating_point()
    )
    tensors = [snapshot.tensors[n].float() for n in names]
    if backend.optimizer is not None:
        params = [p for group in backend.optimizer.param_groups for p in group["params"]]
        moments = ("exp_avg", "exp_avg_sq") if backend.config.name == "adam" else ("momentum_buffer",)
        for index, param in enumerate(params):
            for moment in moments:
                name = f"{OPTIM_PREFIX}{index}.{moment}"
                value = snapshot.tensors.get(name)
                names.append(name)
                tensors.append(
                    value.float() if value is not None else torch.zeros_like(param, dtype=torch.float32)
                )
    return names, tensors


def _apply_average(
    backend: ExpertBackend, names: list[str], before: list[torch.Tensor], averaged: list[torch.Tensor]
) -> None:
    """State := average + (what changed locally since the snapshot was taken). Compute thread only."""
    current = expert_state(backend)
    merged = dict(current.tensors)
    for name, old, mean in zip(names, before, averaged, strict=True):
        now = current.tensors.get(name)
        base = now.float() - old if now is not None else torch.zeros_like(mean)
        value = mean + base
        if name.endswith("exp_avg_sq"):
            value = value.clamp_(min=0.0)
        like = now if now is not None else old
        merged[name] = value.to(like.dtype)
    if backend.optimizer is not None:  # moments need a step counter: keep ours, or start one
        for name in names:
            if name.startswith(OPTIM_PREFIX):
                counter = name.rsplit(".", 1)[0] + ".step"
                if counter not in merged and backend.config.name == "adam":
                    merged[counter] = torch.tensor(float(max(1, backend.steps)))
    apply_expert_state(backend, merged, backend.steps)


def _short(handle: ExpertHandle) -> str:
    return handle.node_id.hex()[:8]

"""Expert replicas: servers hosting the same uid share one state instead of training unrelated copies.

* Donor: every server answers `state.*` calls (`node_agent.averaging.state_download`) with a consistent
  snapshot of a hosted expert, taken on the compute thread between optimiser steps.
* Takeover: before a server announces a uid, it downloads the newest state from a live replica (ranked by
  the steps their `info` reports); with no live replica it asks `fallback(uid)` (the project's last
  exported checkpoint), and only then starts from its own initial weights.
* Averaging: every `period` seconds, for each hosted uid with another live replica, the server pulls the
  state of one replica (round robin over them) and replaces its own by the mean of the two, parameters and
  optimiser moments alike, keeping the larger step. Both replicas do so, so they converge to one state
  (pairwise gossip averaging; Boyd et al. 2006). A replica that vanishes leaves the others holding at most
  `period` seconds less training than it had.

Pulls go through the same hostile-donor checks as any state download: a replica that sends wrong shapes,
non-finite or huge values is skipped for that round (counted as a failed round).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from node_agent.averaging.state_download import (
    Donor,
    DownloadedState,
    DownloadOptions,
    StateDonor,
    StateDownloadError,
    StateSnapshot,
    download_newest,
    download_state,
    entries_of,
)
from node_agent.dht.api import DHTNodeAPI
from node_agent.moe.announce import live_replicas, uid_key
from node_agent.moe.api import ExpertHandle
from node_agent.moe.server.backend import ExpertBackend
from node_agent.moe.server.runtime import BatchingRuntime
from node_agent.moe.server.state import apply_expert_state, expert_state, expert_state_schema
from node_agent.rtc.pool import ConnectionPool

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
                link = await self.pool.connect(handle.node_id, handle.endpoint, timeout)
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
        self._turn: dict[str, int] = {}

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
        while True:
            await asyncio.sleep(self.period)
            await self.average_once()

    async def average_once(self) -> int:
        """One round over every hosted uid that has another live replica; returns how many averaged."""
        replicas = await self.finder.other_replicas(list(self.backends))
        averaged = 0
        for uid, handles in replicas.items():
            if not handles:
                continue
            turn = self._turn.get(uid, 0)
            self._turn[uid] = turn + 1
            handle = handles[turn % len(handles)]
            if await self._average_with(uid, handle):
                averaged += 1
        return averaged

    async def _average_with(self, uid: str, handle: ExpertHandle) -> bool:
        backend = self.backends[uid]
        donors = await self.finder.donors([handle])
        if not donors:
            self.stats.rounds_failed += 1
            return False
        try:
            theirs = await download_state(donors[0], uid, expert_state_schema(backend), DownloadOptions())
        except StateDownloadError as exc:
            logger.warning("averaging %s with %s failed: %s", uid, donors[0].name, exc)
            self.stats.rounds_failed += 1
            return False
        await self.runtime.call(lambda: _average_into(backend, theirs))
        self.stats.rounds_completed += 1
        self.stats.last_averaged[uid] = time.monotonic()
        return True


def _average_into(backend: ExpertBackend, theirs: DownloadedState) -> None:
    """Own state := mean of own and theirs (tensors both hold); step := the larger. Compute thread only."""
    mine = expert_state(backend)
    merged: dict[str, torch.Tensor] = dict(theirs.tensors)  # moments only they have (we never stepped)
    for name, value in mine.tensors.items():
        other = theirs.tensors.get(name)
        if other is None or not value.is_floating_point():
            merged[name] = value
        elif name.endswith(".step"):
            merged[name] = torch.maximum(value, other.to(value.dtype))
        else:
            merged[name] = (value + other.to(value.dtype)) / 2
    apply_expert_state(backend, merged, max(mine.step, theirs.step))


def _short(handle: ExpertHandle) -> str:
    return handle.node_id.hex()[:8]

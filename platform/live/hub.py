"""One hub per project per portal process: listens to the project's group once, coalesces, fans out.

Every viewer of a project in this process shares the hub, so the channel layer carries each service
event once per process rather than once per viewer, the coalescer runs once, and each flush is encoded
once (viewers only splice in their own `seq`). The hub is created by the first viewer and closed when
the last one leaves; its tasks are tracked and cancelled on close, and an error in one is logged.

Node events also carry the node's replica report: the hub keeps the online nodes' reports (live.replicas)
and sends `replicas.changed` when the replicas panel may have changed, its summary folded once per flush.

Besides service events the hub produces three things itself: a swarm samples/s point every
`SERIES_INTERVAL_S` (live.series); `edges.changed` for nodes whose recent peers changed, read every
`EDGE_REFRESH_S` for the nodes that reported since the last read; and, as a safety net for alerts
opened or resolved by something that did not broadcast, alert diffs from comparing the project's open
alerts every `ALERT_POLL_S` (the alert services broadcast `swarm.alert_changed` themselves).

A flush does no database work in the steady state: node owners are cached from the hub's seed (only a
node never seen before costs one query), and peers are read by the edge refresh, off the path between
a heartbeat and the viewers (delivery latency is measured across that path; benchmarks/bench_live.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Protocol

from channels.db import database_sync_to_async
from channels.layers import BaseChannelLayer
from django.conf import settings
from django.utils import timezone

from core.events import project_swarm_group
from live import selectors
from live.coalescer import Coalescer
from live.inbound import NODE_CHANGED, InboundError, node_replicas, to_diffs
from live.protocol import AlertView, Diff, EdgesChanged, ReplicasChanged, dumps, encode_flush
from live.replicas import ReplicaTracker
from live.series import ThroughputTracker
from swarm.replicas import empty_summary
from swarm.summaries import ReplicaReport

logger = logging.getLogger(__name__)

SERIES_INTERVAL_S = 5.0
ALERT_POLL_S = 30.0
EDGE_REFRESH_S = 2.0
GROUP_REFRESH_S = 3600.0  # channels_redis forgets group members after a day; re-join well before


class Viewer(Protocol):
    """What a hub needs from a connected viewer (live.consumers.SwarmConsumer)."""

    async def deliver(self, kind: str, body: str) -> None: ...


@dataclass(frozen=True, slots=True)
class SharedSnapshot:
    """A snapshot's viewer-independent JSON (without braces) plus the hub's swarm series at read time."""

    body: str
    swarm_series: str


class ProjectHub:
    def __init__(self, *, project_id: int, slug: str, layer: BaseChannelLayer, channel: str) -> None:
        self.project_id, self.slug = project_id, slug
        self.group = project_swarm_group(slug)
        self._layer, self._channel = layer, channel
        self._viewers: set[Viewer] = set()
        self._coalescer = Coalescer()
        self._wake = asyncio.Event()
        self._tracker = ThroughputTracker(fresh_within=float(settings.SWARM["ONLINE_WITHIN"]))
        self._replicas = ReplicaTracker()
        self._owner_cache: dict[str, tuple[str, str]] = {}
        self._edges: dict[str, tuple[Any, ...]] = {}
        self._edges_stale: set[str] = set()  # nodes that reported since their peers were last read
        self._alerts: dict[str, AlertView] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._registrations = 0
        self._snapshot_read: tuple[int, asyncio.Task[SharedSnapshot]] | None = None
        self.closed = False

    @classmethod
    async def create(cls, *, project_id: int, slug: str, layer: BaseChannelLayer) -> ProjectHub:
        # The default prefix matters: channels_redis reads every process-local channel through one
        # shared key per prefix, and only the default one is read while consumers wait on theirs.
        channel = await layer.new_channel()
        hub = cls(project_id=project_id, slug=slug, layer=layer, channel=channel)
        await layer.group_add(hub.group, channel)
        try:
            await hub._seed()
        except BaseException:
            await layer.group_discard(hub.group, channel)
            raise
        for name, job in (
            ("receive", hub._receive_loop),
            ("flush", hub._flush_loop),
            ("series", lambda: hub._every(SERIES_INTERVAL_S, hub._sample_series)),
            ("alerts", lambda: hub._every(ALERT_POLL_S, hub._poll_alerts)),
            ("edges", lambda: hub._every(EDGE_REFRESH_S, hub._refresh_edges)),
            ("group", lambda: hub._every(GROUP_REFRESH_S, hub._rejoin_group)),
        ):
            hub._start(name, job)
        logger.info("live hub for %s started (channel %s)", slug, channel)
        return hub

    # ---- viewers ---------------------------------------------------------------------------------------

    def add(self, viewer: Viewer) -> int:
        """Register a viewer; flushes reach it from now on. Returns its ticket for `snapshot`."""
        self._viewers.add(viewer)
        self._registrations += 1
        return self._registrations

    def discard(self, viewer: Viewer) -> None:
        self._viewers.discard(viewer)

    @property
    def viewer_count(self) -> int:
        return len(self._viewers)

    async def snapshot(self, ticket: int) -> SharedSnapshot:
        """The shared part of a snapshot, read after the viewer with `ticket` registered.

        Viewers connecting together share one database read (hundreds of browsers reopening after a
        portal restart must not mean hundreds of identical queries), but only a read that started after
        a viewer registered may serve it, or a change could fall between the read and its first diff.
        """
        current = self._snapshot_read
        if current is None or current[0] < ticket or current[1].done():
            read = asyncio.get_running_loop().create_task(
                self._read_shared(), name=f"live-hub-{self.slug}-snapshot"
            )
            read.add_done_callback(_retrieve)
            current = self._snapshot_read = (self._registrations, read)
        # A viewer that stops waiting (its own timeout, a disconnect) must not cancel the others' read.
        return await asyncio.shield(current[1])

    async def _read_shared(self) -> SharedSnapshot:
        parts = await database_sync_to_async(self._read_snapshot)()
        return SharedSnapshot(body=dumps(parts)[1:-1], swarm_series=dumps(list(self._tracker.points)))

    def _read_snapshot(self) -> dict[str, Any]:
        project = selectors.project_for_slug(self.slug)
        if project is None:
            raise LookupError(f"project {self.slug} no longer exists")
        parts = selectors.snapshot_parts(project=project)
        parts["limits"] = {
            "online_within": settings.SWARM["ONLINE_WITHIN"],
            "offline_after": settings.SWARM["OFFLINE_AFTER"],
        }
        return parts

    # ---- start-up state ----------------------------------------------------------------------------------

    async def _seed(self) -> None:
        seed = await database_sync_to_async(self._read_seed)()
        for view, owner, key, peers, report in seed["nodes"]:
            self._tracker.update(view)
            self._replicas.update(view["node_id"], view["state"], report)
            self._owner_cache[view["node_id"]] = (owner, key)
            self._edges[view["node_id"]] = peers
        self._tracker.points.extend(seed["history"])
        self._alerts = {a["id"]: a for a in seed["alerts"]}

    def _read_seed(self) -> dict[str, Any]:
        project = selectors.project_for_slug(self.slug)
        nodes = []
        if project is not None:
            from swarm.events import replica_report
            from swarm.selectors import nodes_of_project

            for node in nodes_of_project(project=project):
                view, extras = selectors.node_row_view(node)
                nodes.append((view, extras.owner, extras.owner_key, extras.peers, replica_report(node)))
        since = selectors.history_since(timezone.now())
        return {
            "nodes": nodes,
            "history": selectors.swarm_history(project_id=self.project_id, since=since),
            "alerts": selectors.open_alert_views(project_id=self.project_id),
        }

    # ---- tasks -------------------------------------------------------------------------------------------

    def _start(self, name: str, job: Callable[[], Coroutine[Any, Any, None]]) -> None:
        task = asyncio.get_running_loop().create_task(job(), name=f"live-hub-{self.slug}-{name}")
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("live hub %s: task %s failed", self.slug, task.get_name(), exc_info=task.exception())

    async def _every(self, period: float, action: Callable[[], Awaitable[None]]) -> None:
        while True:
            await asyncio.sleep(period)
            try:
                await action()
            except Exception:
                logger.exception("live hub %s: periodic %s failed; will retry", self.slug, action.__name__)

    async def _receive_loop(self) -> None:
        while True:
            message = await self._layer.receive(self._channel)
            self.accept_event(message, received_at=time.time())

    def accept_event(self, event: dict[str, Any], *, received_at: float) -> None:
        """One portal event from the group: converted, coalesced; bad ones are logged and dropped."""
        if event.get("project") not in (None, self.slug):
            logger.warning("live hub %s: event for project %r ignored", self.slug, event.get("project"))
            return
        try:
            diffs = to_diffs(event, received_at=received_at)
            report = node_replicas(event) if event.get("type") == NODE_CHANGED else None
        except InboundError as exc:
            logger.warning("live hub %s: dropped malformed %r event: %s", self.slug, event.get("type"), exc)
            return
        for diff in diffs:  # the alert poll (a safety net) compares against what was broadcast
            if diff["type"] == "alert.raised":
                self._alerts[diff["alert"]["id"]] = diff["alert"]
            elif diff["type"] == "alert.cleared":
                self._alerts.pop(diff["alert_id"], None)
        self.push(diffs + self._replica_diffs(diffs, report))

    def _replica_diffs(self, diffs: list[Diff], report: ReplicaReport | None) -> list[Diff]:
        """A `replicas.changed` (its summary filled in at flush) if a node's report changed the panel."""
        changed, at = False, 0.0
        for diff in diffs:
            if diff["type"] == "node.upsert" and report is not None:
                node = diff["node"]
                if self._replicas.update(node["node_id"], node["state"], report):
                    changed, at = True, max(at, diff["at"])
            elif diff["type"] == "node.remove" and self._replicas.remove(diff["node_id"]):
                changed, at = True, max(at, diff["at"])
        if not changed:
            return []
        replicas: ReplicasChanged = {"type": "replicas.changed", "at": at, "replicas": empty_summary()}
        return [replicas]

    def push(self, diffs: list[Diff]) -> None:
        now = asyncio.get_running_loop().time()
        for diff in diffs:
            self._coalescer.push(diff, now)
        if diffs:
            self._wake.set()

    async def _flush_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due = self._coalescer.next_flush_at()
            if due is None:
                self._wake.clear()
                await self._wake.wait()
                continue
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            flush = self._coalescer.flush(loop.time())
            if flush is None:
                continue
            try:
                diffs = await self._enrich(flush.diffs)
                kind, body = encode_flush(diffs, since=flush.since, server_time=time.time())
            except Exception:
                logger.exception("live hub %s: could not prepare a flush; viewers will resync", self.slug)
                continue
            started = time.time()
            await self._fan_out(kind, body)
            logger.debug(
                "live hub %s: %d diffs to %d viewers in %.1f ms, oldest change %.0f ms before",
                self.slug,
                len(diffs),
                len(self._viewers),
                (time.time() - started) * 1000,
                (started - flush.since) * 1000,
            )

    async def _fan_out(self, kind: str, body: str) -> None:
        for viewer in list(self._viewers):
            try:
                await viewer.deliver(kind, body)
            except Exception as exc:  # mostly a socket that closed before its disconnect was handled
                logger.warning("live hub %s: delivery to a viewer failed (%r); dropping it", self.slug, exc)
                self._viewers.discard(viewer)

    async def _enrich(self, diffs: list[Diff]) -> list[Diff]:
        """Fill in node owners (from the cache; one query for nodes never seen) and the replicas panel's
        summary, track throughput."""
        unknown = [
            d["node"]["node_id"]
            for d in diffs
            if d["type"] == "node.upsert" and d["node"]["node_id"] not in self._owner_cache
        ]
        if unknown:
            extras = await database_sync_to_async(selectors.node_extras)(
                project_id=self.project_id, node_ids=unknown
            )
            for node_id, extra in extras.items():
                self._owner_cache[node_id] = (extra.owner, extra.owner_key)
        for diff in diffs:
            if diff["type"] == "node.upsert":
                node = diff["node"]
                owner = self._owner_cache.get(node["node_id"])
                if owner is not None:
                    node["owner"], node["owner_key"] = owner
                self._edges_stale.add(node["node_id"])
                self._tracker.update(node)
            elif diff["type"] == "node.remove":
                self._tracker.remove(diff["node_id"])
                self._edges.pop(diff["node_id"], None)
                self._edges_stale.discard(diff["node_id"])
            elif diff["type"] == "replicas.changed":
                diff["replicas"] = self._replicas.summary()  # every report up to now, folded once
        return diffs

    async def _refresh_edges(self) -> None:
        """`edges.changed` for the nodes that reported lately and whose recent peers changed."""
        if not self._edges_stale:
            return
        node_ids, self._edges_stale = sorted(self._edges_stale), set()
        extras = await database_sync_to_async(selectors.node_extras)(
            project_id=self.project_id, node_ids=node_ids
        )
        now = time.time()
        diffs: list[Diff] = []
        for node_id, extra in extras.items():
            self._owner_cache[node_id] = (extra.owner, extra.owner_key)
            if self._edges.get(node_id, ()) != extra.peers:
                self._edges[node_id] = extra.peers
                edges: EdgesChanged = {
                    "type": "edges.changed",
                    "at": now,
                    "source": node_id,
                    "targets": list(extra.peers),
                }
                diffs.append(edges)
        self.push(diffs)

    async def _sample_series(self) -> None:
        point = self._tracker.point(time.time())
        self.push([{"type": "metrics.appended", "at": point["t"], "series": "swarm", "points": [point]}])

    async def _poll_alerts(self) -> None:
        current = {a["id"]: a for a in await database_sync_to_async(selectors.open_alert_views)(
            project_id=self.project_id
        )}  # fmt: skip
        now = time.time()
        diffs: list[Diff] = []
        for alert_id in self._alerts.keys() - current.keys():
            diffs.append({"type": "alert.cleared", "at": now, "alert_id": alert_id})
        for alert_id in current.keys() - self._alerts.keys():
            diffs.append({"type": "alert.raised", "at": now, "alert": current[alert_id]})
        self._alerts = current
        self.push(diffs)

    async def _rejoin_group(self) -> None:
        await self._layer.group_add(self.group, self._channel)

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        try:
            await self._layer.group_discard(self.group, self._channel)
        except Exception:
            logger.exception("live hub %s: could not leave group %s", self.slug, self.group)
        logger.info("live hub for %s closed", self.slug)


def _retrieve(task: asyncio.Task[Any]) -> None:
    """Mark a shared read's failure retrieved: every viewer still waiting on it re-raises it itself."""
    if not task.cancelled():
        task.exception()


class HubRegistry:
    """The hubs of this process, one per (event loop, project); created on demand, closed when idle."""

    def __init__(self) -> None:
        self._hubs: dict[tuple[int, str], ProjectHub] = {}
        self._lock: asyncio.Lock | None = None
        self._lock_loop: int | None = None

    def _loop_lock(self) -> asyncio.Lock:
        loop_id = id(asyncio.get_running_loop())
        if self._lock is None or self._lock_loop != loop_id:
            self._lock, self._lock_loop = asyncio.Lock(), loop_id
        return self._lock

    async def join(
        self, viewer: Viewer, *, project_id: int, slug: str, layer: BaseChannelLayer
    ) -> tuple[ProjectHub, int]:
        key = (id(asyncio.get_running_loop()), slug)
        async with self._loop_lock():
            hub = self._hubs.get(key)
            if hub is None or hub.closed:
                hub = await ProjectHub.create(project_id=project_id, slug=slug, layer=layer)
                self._hubs[key] = hub
            return hub, hub.add(viewer)

    async def leave(self, viewer: Viewer, hub: ProjectHub) -> None:
        async with self._loop_lock():
            hub.discard(viewer)
            if hub.viewer_count == 0:
                key = (id(asyncio.get_running_loop()), hub.slug)
                if self._hubs.get(key) is hub:
                    del self._hubs[key]
                await hub.close()

    def hub_for(self, slug: str) -> ProjectHub | None:
        return self._hubs.get((id(asyncio.get_running_loop()), slug))


hubs = HubRegistry()

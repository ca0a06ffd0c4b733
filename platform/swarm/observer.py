"""The swarm observer: joins each active project's DHT as a client and reports what is really announced.

A thin asyncio shell around `swarm.observations.observation_record` (which holds the rules). It reads the
expert grid by walking prefix keys (`experts:ffn.`, then `experts:ffn.<i>.`, the same keys beam search
reads, Learning@home section 3.1) and publishes the project's revocation list, signed by the portal key.
Run it with `manage.py observe_swarm`; it never serves experts and is never on the training path.

Being announced proves nothing about being reachable, so each round it also probes the announced nodes that
are due (`swarm.probe_schedule`: interval with jitter, backoff for nodes that keep failing, a cap per round)
with a real `info` call per expert over WebRTC, through a connection pool of its own, exactly as a trainer
would (`node_agent.moe.probe`), at most `concurrency` at once. The latest outcome per announced node goes to
`observation_record`, where coverage counts only serving nodes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.utils import timezone

from node_agent.dht import DHTError
from node_agent.dht.api import DHTNodeAPI
from node_agent.identity import Identity
from node_agent.moe.announce import Announcement, live_children
from node_agent.moe.probe import ProbeResult, probe_node
from node_agent.portal.gate import CredentialPolicy
from node_agent.portal.ice import ice_servers_for
from node_agent.portal.project_dht import ProjectScope, install_project_validators
from node_agent.portal.revocations import MAX_REVOKED, revocation_list_value, revocations_key
from node_agent.rtc.config import RTCOptions
from node_agent.rtc.pool import ConnectionPool
from swarm.probe_schedule import ProbeOutcome, ProbeSchedule
from swarm.selectors import ice_server_specs
from swarm.services import observer_turn_grant

logger = logging.getLogger(__name__)

REVOCATION_TTL_S = 600.0


@dataclass(frozen=True, slots=True)
class ProjectTarget:
    """What the observer needs of a project, read from the database once per round."""

    pk: int
    slug: str
    #: Every grid the project's servers announce (a language model has one per block), all of shape `dims`.
    prefixes: tuple[str, ...]
    dims: tuple[int, ...]
    peers: tuple[str, ...]
    revoked: tuple[str, ...]
    gated: bool = False


@dataclass
class _Joined:
    dht: DHTNodeAPI
    peers: tuple[str, ...]
    pool: ConnectionPool | None = None
    failures: int = 0
    created_at: float = field(default_factory=time.time)
    schedule: ProbeSchedule = field(default_factory=ProbeSchedule)
    probes: dict[str, ProbeOutcome] = field(default_factory=dict)


async def read_announcements(
    dht: DHTNodeAPI, prefix: str, dims: Sequence[int], endpoints: dict[str, Announcement] | None = None
) -> dict[str, set[str]]:
    """node id hex -> expert uids it announces, walking the grid one coordinate at a time; fills `endpoints`
    (node id hex -> its freshest announcement: DHT endpoint and relays) when given."""
    announced: dict[str, set[str]] = {}
    freshest: dict[str, float] = {}
    frontier = [f"{prefix}."]
    for depth, side in enumerate(dims):
        found = await dht.get_many([f"experts:{p}" for p in frontier], latest=True)
        next_frontier = []
        for p in frontier:
            for coordinate, servers in live_children(found.get(f"experts:{p}", {})).items():
                if coordinate >= side:
                    continue
                if depth == len(dims) - 1:
                    for announcement in servers:
                        node = announcement.node_id.hex()
                        announced.setdefault(node, set()).add(f"{p}{coordinate}")
                        if endpoints is not None and announcement.announced_at >= freshest.get(node, -1.0):
                            freshest[node] = announcement.announced_at
                            endpoints[node] = announcement
                else:
                    next_frontier.append(f"{p}{coordinate}.")
        frontier = sorted(set(next_frontier))
        if not frontier:
            break
    return announced


def load_targets() -> list[ProjectTarget]:
    from projects.lifecycle import ProjectStatus
    from projects.models import Project
    from swarm import selectors
    from swarm.models import IssuedCredential

    now = timezone.now()
    targets = []
    for project in Project.objects.filter(status__in=[ProjectStatus.ACTIVE, ProjectStatus.PAUSED]):
        revoked = IssuedCredential.objects.filter(
            node__project=project, revoked_at__isnull=False, expires_at__gt=now
        ).order_by("-revoked_at")
        targets.append(
            ProjectTarget(
                pk=project.pk,
                slug=project.slug,
                prefixes=tuple(project.grid_prefixes),
                dims=project.grid_dims,
                peers=tuple(selectors.bootstrap_peers(project=project, now=now)),
                revoked=tuple(revoked.values_list("cid", flat=True)[:MAX_REVOKED]),
                gated=selectors.swarm_settings(project=project).gated,
            )
        )
    return targets


class SwarmObserver:
    """One DHT client per project swarm, re-created when its bootstrap fails or reads keep failing."""

    def __init__(
        self,
        identity: Identity,
        *,
        listen: str = "0.0.0.0:0",
        rpc_timeout: float = 3.0,
        rtc_options: RTCOptions | None = None,
        probe: bool = True,
    ) -> None:
        self.identity = identity
        self.listen = listen
        self.rpc_timeout = rpc_timeout
        self.rtc_options = rtc_options or RTCOptions()
        self.probe = probe
        self.probe_timeout = float(settings.SWARM["PROBE_TIMEOUT"])
        self.probe_experts = int(settings.SWARM["PROBE_EXPERTS"])
        self._probing = asyncio.Semaphore(max(1, int(settings.SWARM["PROBE_CONCURRENCY"])))
        self._rng = random.Random()
        self._joined: dict[str, _Joined] = {}
        self._endpoints: dict[str, dict[str, Announcement]] = {}

    def _with_operator_ice(self, options: RTCOptions) -> RTCOptions:
        """`options` plus the operator's STUN/TURN servers, with a fresh TURN credential for the observer's
        own node id: probes must take the path a trainer behind a NAT takes, TURN included."""
        now = time.time()
        operator = ice_servers_for(ice_server_specs(), observer_turn_grant(self.identity, now=now), now=now)
        return replace(options, ice_servers=operator + options.ice_servers)

    async def _dht_for(self, target: ProjectTarget) -> Any:
        from node_agent.dht import DHTNode

        joined = self._joined.get(target.slug)
        if joined is not None and joined.failures < 2:
            return joined.dht
        if joined is not None:
            await self._leave(target.slug)
        dht = await DHTNode.create(
            initial_peers=list(target.peers),
            listen=self.listen,
            identity=self.identity,
            client_mode=True,
            rpc_timeout=self.rpc_timeout,
        )
        schedule = ProbeSchedule(
            interval=float(settings.SWARM["PROBE_INTERVAL"]),
            max_backoff=float(settings.SWARM["PROBE_MAX_BACKOFF"]),
            per_round=int(settings.SWARM["PROBE_PER_ROUND"]),
        )
        joined = _Joined(dht, target.peers, schedule=schedule)
        self._joined[target.slug] = joined
        if self.probe:
            joined.pool = await ConnectionPool.create(dht, None, self._with_operator_ice(self.rtc_options))
        logger.info("observer joined the DHT of %s through %d peer(s)", target.slug, len(target.peers))
        return dht

    def _install_validators(self, dht: DHTNodeAPI, target: ProjectTarget) -> None:
        """The project's full validator set, with the revocations as the database knows them this round."""
        scope = ProjectScope(target.slug, self.identity.public_key_bytes, target.gated)
        policy = CredentialPolicy(scope.project, scope.portal_key, frozenset(target.revoked))
        install_project_validators(dht, scope, policy)

    async def _leave(self, slug: str) -> None:
        joined = self._joined.pop(slug, None)
        self._endpoints.pop(slug, None)
        if joined is not None:
            if joined.pool is not None:
                await joined.pool.close()
            await joined.dht.shutdown()

    async def observe(self, target: ProjectTarget) -> tuple[dict[str, set[str]] | None, str]:
        """Read one project's announcements and publish its revocation list; (None, why) on failure."""
        if not target.peers:
            return None, "no bootstrap peers known yet"
        try:
            dht = await self._dht_for(target)
            self._install_validators(dht, target)
            endpoints: dict[str, Announcement] = {}
            announced: dict[str, set[str]] = {}
            for prefix in target.prefixes:  # a node serving only block 1's cells is announced all the same
                for node, uids in (await read_announcements(dht, prefix, target.dims, endpoints)).items():
                    announced.setdefault(node, set()).update(uids)
            self._endpoints[target.slug] = endpoints
            now = time.time()
            await dht.store(
                revocations_key(target.slug),
                revocation_list_value(target.revoked, now),
                now + REVOCATION_TTL_S,
            )
        except (DHTError, OSError, ValueError) as exc:
            joined = self._joined.get(target.slug)
            if joined is not None:
                joined.failures += 1
            logger.warning("observer could not read the DHT of %s: %s", target.slug, exc)
            return None, f"{type(exc).__name__}: {exc}"[:300]
        self._joined[target.slug].failures = 0
        return announced, ""

    async def probe_announced(self, slug: str, announced: dict[str, set[str]]) -> dict[str, ProbeOutcome]:
        """Probe the announced nodes that are due; returns the latest outcome of every announced node
        (nodes never probed yet are absent)."""
        joined = self._joined.get(slug)
        if joined is None or joined.pool is None:
            return {}
        endpoints = self._endpoints.get(slug, {})
        for node_id in set(joined.probes) - set(announced):
            del joined.probes[node_id]
        due = [n for n in joined.schedule.due(announced, time.time()) if n in endpoints]
        if due:
            joined.pool.set_ice_servers(self._with_operator_ice(self.rtc_options).ice_servers)
            await asyncio.gather(
                *(self._probe_one(joined, n, endpoints[n], sorted(announced[n])) for n in due)
            )
        return dict(joined.probes)

    async def _probe_one(
        self, joined: _Joined, node_id: str, announcement: Announcement, uids: list[str]
    ) -> None:
        endpoint = announcement.endpoint
        assert joined.pool is not None
        async with self._probing:
            try:
                asked = uids[: self.probe_experts]
                result = await probe_node(
                    joined.pool,
                    bytes.fromhex(node_id),
                    endpoint,
                    asked,
                    self.probe_timeout,
                    relays=announcement.relays,
                )
            except Exception as exc:  # a probe must never stop the observer; it counts as a failure
                logger.exception("probing %s failed", node_id[:12])
                result = ProbeResult("unreachable", reason=f"probe failed: {type(exc).__name__}")
        now = time.time()
        serving = tuple(uids) if result.state == "serving" else result.serving
        joined.probes[node_id] = ProbeOutcome(result.state, serving, result.reason, now)
        joined.schedule.record(node_id, result.state == "serving", now, self._rng)
        if result.state != "serving":
            logger.info("node %s at %s is not serving: %s", node_id[:12], endpoint, result.reason)

    async def run_round(self) -> dict[str, list[tuple[str, str, str]]]:
        """Observe every active project once; returns the state changes applied, per project."""
        from swarm.observations import observation_record

        targets = await sync_to_async(load_targets)()
        for slug in set(self._joined) - {t.slug for t in targets}:
            await self._leave(slug)
        changes = {}
        for target in targets:
            announced, error = await self.observe(target)
            probes = None
            if announced is not None and self.probe:
                probes = await self.probe_announced(target.slug, announced)
            changes[target.slug] = await sync_to_async(observation_record)(
                project_id=target.pk, announced=announced, error=error, now=timezone.now(), probes=probes
            )
        return changes

    async def run(self, *, interval: float, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.run_round()
            except Exception:  # a bad round is logged; the observer keeps going
                logger.exception("observer round failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=interval)

    async def shutdown(self) -> None:
        for slug in list(self._joined):
            await self._leave(slug)

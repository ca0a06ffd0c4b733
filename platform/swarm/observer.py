"""The swarm observer: joins each active project's DHT as a client and reports what is really announced.

A thin asyncio shell around `swarm.observations.observation_record` (which holds the rules). It reads the
expert grid by walking prefix keys (`experts:ffn.`, then `experts:ffn.<i>.`, the same keys beam search
reads, Learning@home section 3.1) and publishes the project's revocation list, signed by the portal key.
Run it with `manage.py observe_swarm`; it never serves experts and is never on the training path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from asgiref.sync import sync_to_async
from django.utils import timezone

from node_agent.dht import DHTError
from node_agent.dht.api import DHTNodeAPI
from node_agent.identity import Identity
from node_agent.moe.announce import live_children
from node_agent.portal.gate import CredentialPolicy
from node_agent.portal.project_dht import ProjectScope, install_project_validators
from node_agent.portal.revocations import MAX_REVOKED, revocation_list_value, revocations_key

logger = logging.getLogger(__name__)

REVOCATION_TTL_S = 600.0


@dataclass(frozen=True, slots=True)
class ProjectTarget:
    """What the observer needs of a project, read from the database once per round."""

    pk: int
    slug: str
    prefix: str
    dims: tuple[int, ...]
    peers: tuple[str, ...]
    revoked: tuple[str, ...]
    gated: bool = False


@dataclass
class _Joined:
    dht: DHTNodeAPI
    peers: tuple[str, ...]
    failures: int = 0
    created_at: float = field(default_factory=time.time)


async def read_announcements(dht: DHTNodeAPI, prefix: str, dims: Sequence[int]) -> dict[str, set[str]]:
    """node id hex -> expert uids it announces, walking the grid one coordinate at a time."""
    announced: dict[str, set[str]] = {}
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
                        announced.setdefault(announcement.node_id.hex(), set()).add(f"{p}{coordinate}")
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
                prefix=selectors.expert_prefix(project),
                dims=project.grid_dims,
                peers=tuple(selectors.bootstrap_peers(project=project, now=now)),
                revoked=tuple(revoked.values_list("cid", flat=True)[:MAX_REVOKED]),
                gated=selectors.swarm_settings(project=project).gated,
            )
        )
    return targets


class SwarmObserver:
    """One DHT client per project swarm, re-created when its bootstrap fails or reads keep failing."""

    def __init__(self, identity: Identity, *, listen: str = "0.0.0.0:0", rpc_timeout: float = 3.0) -> None:
        self.identity = identity
        self.listen = listen
        self.rpc_timeout = rpc_timeout
        self._joined: dict[str, _Joined] = {}

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
        self._joined[target.slug] = _Joined(dht, target.peers)
        logger.info("observer joined the DHT of %s through %d peer(s)", target.slug, len(target.peers))
        return dht

    def _install_validators(self, dht: DHTNodeAPI, target: ProjectTarget) -> None:
        """The project's full validator set, with the revocations as the database knows them this round."""
        scope = ProjectScope(target.slug, self.identity.public_key_bytes, target.gated)
        policy = CredentialPolicy(scope.project, scope.portal_key, frozenset(target.revoked))
        install_project_validators(dht, scope, policy)

    async def _leave(self, slug: str) -> None:
        joined = self._joined.pop(slug, None)
        if joined is not None:
            await joined.dht.shutdown()

    async def observe(self, target: ProjectTarget) -> tuple[dict[str, set[str]] | None, str]:
        """Read one project's announcements and publish its revocation list; (None, why) on failure."""
        if not target.peers:
            return None, "no bootstrap peers known yet"
        try:
            dht = await self._dht_for(target)
            self._install_validators(dht, target)
            announced = await read_announcements(dht, target.prefix, target.dims)
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

    async def run_round(self) -> dict[str, list[tuple[str, str, str]]]:
        """Observe every active project once; returns the state changes applied, per project."""
        from swarm.observations import observation_record

        targets = await sync_to_async(load_targets)()
        for slug in set(self._joined) - {t.slug for t in targets}:
            await self._leave(slug)
        changes = {}
        for target in targets:
            announced, error = await self.observe(target)
            changes[target.slug] = await sync_to_async(observation_record)(
                project_id=target.pk, announced=announced, error=error, now=timezone.now()
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

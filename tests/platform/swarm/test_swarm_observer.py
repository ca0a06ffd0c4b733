"""The observer against a real DHT on 127.0.0.1: it reads announcements, reconciles them with heartbeats,
and publishes the project's revocation list under the portal's own node id."""

from __future__ import annotations

import time
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.utils import timezone

from node_agent.dht import DHTNode
from node_agent.identity import Identity
from node_agent.moe.announce import announce_experts, register_experts_validator
from node_agent.portal.revocations import parse_revocation_list, revocations_key
from swarm.keys import portal_identity
from swarm.models import Alert, Node, NodeState, ProjectSwarm
from swarm.observer import SwarmObserver, read_announcements

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


@pytest.fixture
async def bootstrap() -> Any:
    node = await DHTNode.create(listen="127.0.0.1:0", rpc_timeout=2.0)
    register_experts_validator(node)
    yield node
    await node.shutdown()


async def test_read_announcements_walks_the_grid(bootstrap: Any) -> None:
    server = await DHTNode.create(initial_peers=[bootstrap.endpoint], listen="127.0.0.1:0", rpc_timeout=2.0)
    register_experts_validator(server)
    try:
        await announce_experts(server, ["ffn.0.1", "ffn.2.3", "ffn.9.9"], ttl=60)
        announced = await read_announcements(bootstrap, "ffn", (4, 4))
        assert announced == {server.node_id.hex(): {"ffn.0.1", "ffn.2.3"}}
        await announce_experts(server, ["ffn.0.1"], ttl=60, withdrawn=True)
        assert await read_announcements(bootstrap, "ffn", (4, 4)) == {server.node_id.hex(): {"ffn.2.3"}}
    finally:
        await server.shutdown()


async def test_observer_reconciles_the_dht_with_heartbeats(
    bootstrap: Any, joined: dict[str, Any], node_key: Identity, project: Any, researcher: Any
) -> None:
    from swarm import services

    await sync_to_async(ProjectSwarm.objects.create)(project=project, bootstrap_peers=[bootstrap.endpoint])
    server = await DHTNode.create(
        initial_peers=[bootstrap.endpoint], listen="127.0.0.1:0", identity=node_key, rpc_timeout=2.0
    )
    register_experts_validator(server)
    await announce_experts(server, ["ffn.0.0", "ffn.1.1"], ttl=60)
    node = await sync_to_async(Node.objects.get)(public_key=node_key.public_key_bytes.hex())
    node.role, node.experts, node.last_heartbeat_at = "server", ["ffn.0.0", "ffn.1.1"], timezone.now()
    await sync_to_async(node.save)()
    observer = SwarmObserver(portal_identity(), listen="127.0.0.1:0", rpc_timeout=2.0)
    try:
        changes = await observer.run_round()
        assert changes[project.slug] == [(node.node_id, "registered", "online")]
        swarm = await sync_to_async(ProjectSwarm.objects.get)(project=project)
        assert (
            swarm.coverage["ffn.0.0"] == 1
            and swarm.coverage["ffn.1.1"] == 1
            and "ffn.3.3" not in swarm.coverage  # holes are the cells not listed
        )
        assert swarm.observed_at is not None and swarm.observation_error == ""
        node = await sync_to_async(Node.objects.get)(pk=node.pk)
        assert node.announced_experts == ["ffn.0.0", "ffn.1.1"] and node.last_seen_in_dht_at is not None
        assert await sync_to_async(
            Alert.objects.filter(key="coverage:holes", resolved_at__isnull=True).exists
        )()

        # Banning revokes the credential; the next round publishes it, signed by the portal's key.
        await sync_to_async(services.node_ban)(node=node, actor=researcher, reason="test", now=timezone.now())
        await observer.run_round()
        found = await bootstrap.get(revocations_key(project.slug), latest=True)
        record = found[None]
        assert record.owner == portal_identity().node_id
        cid = await sync_to_async(lambda: node.credentials.first().cid)()
        assert cid in parse_revocation_list(record.value).revoked

        # The server goes away (withdraws) and stops heartbeating: offline.
        await announce_experts(server, ["ffn.0.0", "ffn.1.1"], ttl=60, withdrawn=True)
        await sync_to_async(Node.objects.filter(pk=node.pk).update)(state=NodeState.ONLINE)
        await sync_to_async(Node.objects.filter(pk=node.pk).update)(
            last_heartbeat_at=timezone.now() - timezone.timedelta(seconds=600)
        )
        changes = await observer.run_round()
        assert changes[project.slug] == [(node.node_id, "online", "offline")]
        assert await sync_to_async(
            Alert.objects.filter(key="coverage:none", resolved_at__isnull=True).exists
        )()
    finally:
        await observer.shutdown()
        await server.shutdown()


async def test_observer_reports_a_dht_it_cannot_reach(project: Any) -> None:
    await sync_to_async(ProjectSwarm.objects.create)(project=project, bootstrap_peers=["127.0.0.1:9"])
    observer = SwarmObserver(portal_identity(), listen="127.0.0.1:0", rpc_timeout=0.5)
    try:
        started = time.monotonic()
        await observer.run_round()
        assert time.monotonic() - started < 30
    finally:
        await observer.shutdown()
    swarm = await sync_to_async(ProjectSwarm.objects.get)(project=project)
    assert swarm.observation_error and swarm.observed_at is None
    assert await sync_to_async(Alert.objects.filter(key="observer", resolved_at__isnull=True).exists)()

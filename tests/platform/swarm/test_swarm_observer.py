"""The observer against a real DHT on 127.0.0.1: it reads announcements, reconciles them with heartbeats,
and publishes the project's revocation list under the portal's own node id."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.utils import timezone

from node_agent.dht import DHTNode
from node_agent.identity import Identity
from node_agent.moe.announce import announce_experts, register_experts_validator
from node_agent.moe.server.backend import OptimizerConfig, create_backends
from node_agent.moe.server.server import ExpertServer, ServerOptions
from node_agent.portal.revocations import parse_revocation_list, revocations_key
from node_agent.rtc.config import RTCOptions
from swarm import selectors
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


async def serving_agent(bootstrap: Any, identity: Identity, uids: list[str]) -> tuple[DHTNode, ExpertServer]:
    """A real expert server (DHT node, WebRTC pool with the default options, batching runtime)."""
    dht = await DHTNode.create(
        initial_peers=[bootstrap.endpoint], listen="127.0.0.1:0", identity=identity, rpc_timeout=2.0
    )
    backends = create_backends(uids, "ffn", 8, OptimizerConfig(name="sgd", lr=0.01), seed=0)
    server = await ExpertServer.create(
        dht, backends, ServerOptions(stats_period=3600.0), RTCOptions(connect_timeout=5.0)
    )
    return dht, server


async def silent_agent(bootstrap: Any, uids: list[str]) -> DHTNode:
    """Announces experts, but its `rtc.offer`s go nowhere: it takes them and never answers."""
    dht = await DHTNode.create(initial_peers=[bootstrap.endpoint], listen="127.0.0.1:0", rpc_timeout=2.0)
    register_experts_validator(dht)
    never = asyncio.Event()

    async def swallow(peer: Any, payload: Any) -> Any:
        await never.wait()

    dht.register_rpc("rtc.offer", swallow)
    await announce_experts(dht, uids, ttl=60)
    return dht


async def test_observer_probes_announced_nodes_and_counts_only_serving_cells(
    bootstrap: Any, joined: dict[str, Any], node_key: Identity, project: Any, researcher: Any, settings: Any
) -> None:
    from swarm import services

    settings.SWARM = {**settings.SWARM, "PROBE_TIMEOUT": 3}
    await sync_to_async(ProjectSwarm.objects.create)(project=project, bootstrap_peers=[bootstrap.endpoint])
    dht, started = await serving_agent(bootstrap, node_key, ["ffn.0.0", "ffn.1.1"])
    server: ExpertServer | None = started
    silent = await silent_agent(bootstrap, ["ffn.2.2", "ffn.3.3"])
    node = await sync_to_async(Node.objects.get)(public_key=node_key.public_key_bytes.hex())
    node.role, node.experts, node.last_heartbeat_at = "server", ["ffn.0.0", "ffn.1.1"], timezone.now()
    await sync_to_async(node.save)()
    observer = SwarmObserver(portal_identity(), listen="127.0.0.1:0", rpc_timeout=2.0)
    try:
        changes = await observer.run_round()
        assert changes[project.slug] == [(node.node_id, "registered", "online")]
        swarm = await sync_to_async(ProjectSwarm.objects.get)(project=project)
        # Four cells are announced, but only the two a serving node hosts are covered.
        assert swarm.coverage == {"ffn.0.0": 1, "ffn.1.1": 1} and swarm.announced_cells == 4
        assert swarm.observed_at is not None and swarm.observation_error == ""
        node = await sync_to_async(Node.objects.get)(pk=node.pk)
        assert node.announced_experts == ["ffn.0.0", "ffn.1.1"] and node.last_seen_in_dht_at is not None
        assert node.probe_state == "serving" and node.serving_experts == ["ffn.0.0", "ffn.1.1"]
        assert node.probed_at is not None and node.probe_reason == ""
        silent_probe = observer._joined[project.slug].probes[silent.node_id.hex()]
        assert silent_probe.state == "unreachable" and "no connection" in silent_probe.reason
        assert await sync_to_async(
            Alert.objects.filter(key="coverage:holes", resolved_at__isnull=True).exists
        )()
        reach = await sync_to_async(lambda: selectors.node_reach(project=project))()
        assert reach == {"announced": 1, "reachable": 1, "serving": 1}

        # Banning revokes the credential; the next round publishes it, signed by the portal's key.
        await sync_to_async(services.node_ban)(node=node, actor=researcher, reason="test", now=timezone.now())
        await observer.run_round()
        found = await bootstrap.get(revocations_key(project.slug), latest=True)
        record = found[None]
        assert record.owner == portal_identity().node_id
        cid = await sync_to_async(lambda: node.credentials.first().cid)()
        assert cid in parse_revocation_list(record.value).revoked

        # The server goes away (withdraws) and stops heartbeating: offline.
        stopping, server = server, None
        await stopping.shutdown()
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
        if server is not None:
            await server.shutdown()
        await dht.shutdown()
        await silent.shutdown()


async def test_a_language_models_servers_are_read_on_every_blocks_grid(
    bootstrap: Any, joined: dict[str, Any], node_key: Identity, project: Any, settings: Any
) -> None:
    """A node serving only block 1's experts is announced, probed and online, not "announces nothing"."""
    from projects.models import Project

    settings.SWARM = {**settings.SWARM, "PROBE_TIMEOUT": 3}
    await sync_to_async(Project.objects.filter(pk=project.pk).update)(
        task="lm", lm_blocks=2, grid_shape="2x2"
    )
    await sync_to_async(ProjectSwarm.objects.create)(project=project, bootstrap_peers=[bootstrap.endpoint])
    dht, server = await serving_agent(bootstrap, node_key, ["lm.b1.0.1"])
    node = await sync_to_async(Node.objects.get)(public_key=node_key.public_key_bytes.hex())
    node.role, node.experts, node.last_heartbeat_at = "server", ["lm.b1.0.1"], timezone.now()
    await sync_to_async(node.save)()
    observer = SwarmObserver(portal_identity(), listen="127.0.0.1:0", rpc_timeout=2.0)
    try:
        changes = await observer.run_round()
    finally:
        await observer.shutdown()
        await server.shutdown()
        await dht.shutdown()
    assert changes[project.slug] == [(node.node_id, "registered", "online")]
    node = await sync_to_async(Node.objects.get)(pk=node.pk)
    assert node.announced_experts == ["lm.b1.0.1"] and node.serving_experts == ["lm.b1.0.1"]


async def test_a_heartbeating_node_nobody_can_reach_is_unreachable_with_the_reason(
    bootstrap: Any, joined: dict[str, Any], node_key: Identity, project: Any, settings: Any
) -> None:
    """Announced and heartbeating is not online: its offers go nowhere, so it is unreachable and says why."""
    settings.SWARM = {**settings.SWARM, "PROBE_TIMEOUT": 3}
    await sync_to_async(ProjectSwarm.objects.create)(project=project, bootstrap_peers=[bootstrap.endpoint])
    dht = await DHTNode.create(
        initial_peers=[bootstrap.endpoint], listen="127.0.0.1:0", identity=node_key, rpc_timeout=2.0
    )
    register_experts_validator(dht)
    dht.register_rpc("rtc.offer", lambda peer, payload: asyncio.Event().wait())
    await announce_experts(dht, ["ffn.0.0"], ttl=60)
    node = await sync_to_async(Node.objects.get)(public_key=node_key.public_key_bytes.hex())
    node.role, node.experts, node.last_heartbeat_at = "server", ["ffn.0.0"], timezone.now()
    await sync_to_async(node.save)()
    observer = SwarmObserver(portal_identity(), listen="127.0.0.1:0", rpc_timeout=2.0)
    try:
        changes = await observer.run_round()
    finally:
        await observer.shutdown()
        await dht.shutdown()
    assert changes[project.slug] == [(node.node_id, "registered", "unreachable")]
    node = await sync_to_async(Node.objects.get)(pk=node.pk)
    assert node.probe_state == "unreachable" and node.probe_reason.startswith("no connection")
    assert "not serving: no connection" in node.state_reason
    swarm = await sync_to_async(ProjectSwarm.objects.get)(project=project)
    assert swarm.coverage == {} and swarm.announced_cells == 1


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

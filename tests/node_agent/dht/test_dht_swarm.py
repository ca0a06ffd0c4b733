"""Swarms of real DHT nodes over UDP on 127.0.0.1."""

from __future__ import annotations

import asyncio
import os
import random
import time

import pytest

from node_agent.dht import DHTBootstrapError, DHTNode, DHTRPCError, DHTTimeoutError, PeerInfo, owner_subkey
from node_agent.dht.records import key_id
from node_agent.dht.routing import distance
from tests.node_agent.manual_clock import ManualClock


async def test_store_get_round_trips_with_subkeys_from_several_owners(dht_swarm) -> None:
    nodes = await dht_swarm(24)
    rng = random.Random(1)
    expiration = time.time() + 60
    assert await nodes[3].store("plain", {"hello": [1, 2, b"\x00"]}, expiration)
    owners = rng.sample(nodes, 6)
    stored = await asyncio.gather(
        *(
            n.store("experts:ffn", {"i": i}, expiration, subkey=owner_subkey(f"ffn.{i}", n.node_id))
            for i, n in enumerate(owners)
        )
    )
    assert all(stored)
    for getter in rng.sample(nodes, 5):
        plain = await getter.get("plain")
        assert plain[None].value == {"hello": [1, 2, b"\x00"]} and plain[None].owner == nodes[3].node_id
        grid = await getter.get("experts:ffn", latest=True)
        assert {s: v.value["i"] for s, v in grid.items()} == {
            owner_subkey(f"ffn.{i}", n.node_id): i for i, n in enumerate(owners)
        }
    assert await nodes[5].get("missing") == {}
    many = await nodes[7].get_many(["plain", "missing"])
    assert set(many) == {"plain", "missing"} and many["missing"] == {}
    assert await nodes[9].store_many([("bulk", "a", 1, expiration), ("bulk", "b", 2, expiration)]) == [
        True,
        True,
    ]
    assert {s: v.value for s, v in (await nodes[11].get("bulk", latest=True)).items()} == {"a": 1, "b": 2}


async def test_later_expiration_wins_and_expired_values_vanish(dht_swarm) -> None:
    clock = ManualClock()
    nodes = await dht_swarm(20, clock=clock)
    now = clock.time()
    assert await nodes[1].store("k", "long", now + 60)
    await nodes[2].store("k", "short", now + 30)  # replicas holding "long" refuse it
    assert (await nodes[3].get("k", latest=True))[None].value == "long"
    assert await nodes[4].store("brief", "soon gone", now + 1.0)
    assert (await nodes[5].get("brief"))[None].value == "soon gone"
    await clock.advance(1.2)
    assert await nodes[5].get("brief", latest=True) == {}
    assert all(len(n.core.store.get(key_id("brief"), clock.time())) == 0 for n in nodes)  # gone everywhere
    assert not await nodes[6].store("past", 1, clock.time() - 1)
    assert (await nodes[7].get("k", latest=True))[None].value == "long"


async def test_owners_republish_what_the_replicas_lost(dht_swarm) -> None:
    clock = ManualClock()
    nodes = await dht_swarm(8, clock=clock, republish_interval=60.0)
    owner, reader = nodes[0], nodes[-1]
    assert await owner.store("kept", "v", clock.time() + 600)
    for node in nodes:  # every replica (the owner's own copy included) loses it: churn, a restart
        node.core.store._records.pop(key_id("kept"), None)
    assert await reader.get("kept", latest=True) == {}
    for _ in range(3):  # maintenance rounds every republish_interval / 4; none republishes yet
        await clock.advance(15.0)
    assert await reader.get("kept", latest=True) == {}
    await clock.advance(15.0)  # 60 s since the last republish: this round re-sends the owner's records
    assert (await reader.get("kept", latest=True))[None].value == "v"


async def test_nearest_neighbour_search_finds_the_true_k_nearest(dht_swarm) -> None:
    nodes = await dht_swarm(30, min_rpc_timeout=1.0)  # no spurious timeouts on a busy machine
    for node in random.Random(2).sample(nodes, 5):
        target = os.urandom(20)
        found = [node_id for node_id, _ in await node.find_nearest(target, 8)]
        truth = sorted((n.node_id for n in nodes if n is not node), key=lambda i: distance(i, target))[:8]
        assert found == truth


async def test_values_survive_churn_of_twenty_percent(dht_swarm) -> None:
    nodes = await dht_swarm(25, rpc_timeout=0.5)
    expiration = time.time() + 60
    keys = [f"churn:{i}" for i in range(12)]
    assert all(await asyncio.gather(*(nodes[i].store(k, i, expiration) for i, k in enumerate(keys))))
    victims = random.Random(3).sample(nodes[1:], 5)
    await asyncio.gather(*(v.shutdown() for v in victims))
    survivors = [n for n in nodes if n not in victims]
    results = await asyncio.gather(*(survivors[i % len(survivors)].get(k) for i, k in enumerate(keys)))
    assert [r[None].value for r in results] == list(range(12))


async def test_client_mode_queries_and_stores_but_is_never_routed_to(dht_swarm) -> None:
    nodes = await dht_swarm(20)
    client = await DHTNode.create(initial_peers=[nodes[0].endpoint], client_mode=True)
    try:
        assert await client.store("from-client", 42, time.time() + 60)
        assert (await nodes[10].get("from-client"))[None].value == 42
        assert (await client.get("from-client"))[None].value == 42
        assert all(client.node_id not in n.core.routing for n in nodes)
        assert len(client.core.store) == 0
    finally:
        await client.shutdown()


async def test_app_rpc_is_signed_and_errors_are_reported(bootstrap_node: DHTNode) -> None:
    caller = await DHTNode.create(initial_peers=[bootstrap_node.endpoint])
    seen: list[PeerInfo] = []

    async def echo(peer: PeerInfo, payload: dict) -> dict:
        seen.append(peer)
        return {"echo": payload["blob"]}

    async def broken(peer: PeerInfo, payload: dict) -> dict:
        raise RuntimeError("handler bug")

    bootstrap_node.register_rpc("echo", echo)
    bootstrap_node.register_rpc("broken", broken)
    try:
        blob = os.urandom(16 * 1024)  # an SDP offer is 1-3 KB; 16 KiB must fit
        peer, answer = await caller.call_rpc(bootstrap_node.endpoint, "echo", {"blob": blob}, timeout=2.0)
        assert answer == {"echo": blob} and peer.node_id == bootstrap_node.node_id
        assert seen[0].node_id == caller.node_id and seen[0].public_key == caller.identity.public_key_bytes
        with pytest.raises(DHTRPCError, match="handler bug"):
            await caller.call_rpc(bootstrap_node.endpoint, "broken", {}, timeout=2.0)
        with pytest.raises(DHTRPCError, match="unknown rpc"):
            await caller.call_rpc(bootstrap_node.endpoint, "nope", {}, timeout=2.0)
        with pytest.raises(DHTTimeoutError):  # someone else answers at that address: ignored
            await caller.call_rpc(
                bootstrap_node.endpoint, "echo", {"blob": b""}, 0.5, expected_node_id=bytes(20)
            )
        pinned = f"{bootstrap_node.endpoint}/{bootstrap_node.node_id.hex()}"
        assert (await caller.call_rpc(pinned, "echo", {"blob": b"x"}, timeout=2.0))[1] == {"echo": b"x"}
        # The node still serves after a handler crash.
        assert await caller.store("after", 1, time.time() + 60)
    finally:
        await caller.shutdown()


async def test_bootstrap_fails_clearly_when_no_initial_peer_answers(bootstrap_node: DHTNode) -> None:
    dead = await DHTNode.create()
    endpoint = dead.endpoint
    await dead.shutdown()
    with pytest.raises(DHTBootstrapError, match="none of the 1 initial peers answered"):
        await DHTNode.create(initial_peers=[endpoint], bootstrap_timeout=0.3)
    node = await DHTNode.create(initial_peers=[endpoint, bootstrap_node.endpoint], bootstrap_timeout=0.3)
    assert bootstrap_node.node_id in node.core.routing
    await node.shutdown()
    with pytest.raises(ValueError):
        await DHTNode.create(initial_peers=["not-an-endpoint"])
    with pytest.raises(TypeError, match="unknown DHT options"):
        await DHTNode.create(bucket_sise=3)

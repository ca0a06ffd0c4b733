"""Misbehaving peers over real UDP: each attack is refused and nothing invalid is stored."""

from __future__ import annotations

import dataclasses
import socket
import time

import msgspec
import pytest

from node_agent.dht import DHTNode, DHTValidationError, owner_subkey
from node_agent.dht.endpoints import parse_endpoint, source_key
from node_agent.dht.records import key_id, sign_record
from node_agent.dht.routing import distance
from node_agent.dht.validation import SchemaValidator
from node_agent.identity import Identity
from node_agent.wire import pack, pack_message
from tests.processes import wait_until_async


def address(node: DHTNode) -> tuple[str, int]:
    host, port, _ = parse_endpoint(node.endpoint)
    return host, port


async def test_forged_record_for_someone_elses_protected_subkey_is_refused(dht_swarm) -> None:
    alice, mallory, *others = await dht_swarm(6)
    victim_subkey = owner_subkey("ffn.1", alice.node_id)
    assert await alice.store("experts:ffn", "genuine", time.time() + 60, subkey=victim_subkey)
    with pytest.raises(DHTValidationError, match="owner-protected"):
        await mallory.store("experts:ffn", "evil", time.time() + 120, subkey=victim_subkey)
    # Bypass mallory's own checks and push the forged record straight at every peer.
    forged = sign_record(mallory.identity, "experts:ffn", victim_subkey, "evil", time.time() + 120)
    for target in [alice, *others]:
        assert await mallory._send_records(target.node_id, address(target), [forged]) == [False]
    found = await others[0].get("experts:ffn", latest=True)
    assert found[victim_subkey].value == "genuine" and found[victim_subkey].owner == alice.node_id


async def test_spoofed_node_id_and_replayed_request_are_refused(bootstrap_node: DHTNode) -> None:
    victim, mallory = Identity.generate(), Identity.generate()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    try:
        body = {
            "id": b"\x01" * 8,
            "ts": time.time(),
            "pk": victim.public_key_bytes,
            "to": b"",
            "c": False,
            "p": {},
        }
        inner = pack_message("ping", body)
        sock.sendto(pack([inner, mallory.sign(inner)]), address(bootstrap_node))  # claims the victim's key
        drops = bootstrap_node.core.drops.counts
        await wait_until_async(lambda: drops["bad signature"] == 1, timeout=5)
        assert victim.node_id not in bootstrap_node.core.routing
        genuine = pack([inner, victim.sign(inner)])  # as if captured on the wire, then replayed
        sock.sendto(genuine, address(bootstrap_node))
        sock.sendto(genuine, address(bootstrap_node))
        await wait_until_async(lambda: drops["replayed request"] == 1, timeout=5)
    finally:
        sock.close()


async def test_oversized_and_far_future_records_are_refused(dht_swarm) -> None:
    honest, mallory = await dht_swarm(2)
    with pytest.raises(DHTValidationError, match="exceeds"):
        await mallory.store("big", b"x" * 20_000, time.time() + 60)
    with pytest.raises(DHTValidationError, match="future"):
        await mallory.store("far", 1, time.time() + 10 * 365 * 24 * 3600)
    oversized = sign_record(mallory.identity, "big", None, b"x" * 20_000, time.time() + 60)
    far = sign_record(mallory.identity, "far", None, 1, time.time() + 10 * 365 * 24 * 3600)
    assert await mallory._send_records(honest.node_id, address(honest), [oversized, far]) == [False, False]
    assert len(honest.core.store) == 0


async def test_garbage_datagrams_are_counted_and_repeat_offenders_ignored(bootstrap_node: DHTNode) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    try:
        for payload in (b"", b"\xc1", pack({"v": 1}), b"\x92" * 100):
            sock.sendto(payload, address(bootstrap_node))
        drops = bootstrap_node.core.drops.counts
        await wait_until_async(lambda: drops["malformed"] + drops["banned address"] == 4, timeout=5)
        assert drops["malformed"] >= 3
        assert bootstrap_node.core.penalties.is_banned(source_key(sock.getsockname()[0]), time.time())
        assert await bootstrap_node.store("still-alive", 1, time.time() + 60)
    finally:
        sock.close()


class Announcement(msgspec.Struct):
    endpoint: str


async def test_invalid_values_found_in_a_lookup_are_discarded_and_the_holder_penalised(dht_swarm) -> None:
    nodes = await dht_swarm(8)
    for node in nodes:
        node.register_validator("experts:", SchemaValidator(Announcement))
    with pytest.raises(DHTValidationError, match="schema"):
        await nodes[0].store("experts:x", {"endpoint": 5}, time.time() + 60)
    # A malicious holder serves a tampered record it planted in its own store, bypassing validation.
    by_distance = sorted(nodes, key=lambda n: distance(n.node_id, key_id("experts:x")))
    holder, getter = by_distance[0], by_distance[-1]  # the holder is surely among the nodes asked
    good = sign_record(holder.identity, "experts:x", None, {"endpoint": "1.2.3.4:5"}, time.time() + 60)
    tampered = dataclasses.replace(good, value_bytes=pack({"endpoint": "6.6.6.6:6"}))
    view = holder.core.validators.check(good, time.time())
    holder.core.store.put(tampered, view, time.time(), holder.core.validators.prefers)
    for other in nodes:
        if other is not holder:
            other.core.store._records.pop(key_id("experts:x"), None)
    assert await getter.get("experts:x", latest=True) == {}
    assert getter.core.drops.counts["invalid records"] >= 1

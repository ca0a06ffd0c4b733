"""Reachability and relayed signalling with real DHT nodes: over UDP on 127.0.0.1, and in the simulator with a
node behind an address-and-port-dependent filter (what a home router does to unsolicited packets)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from node_agent.dht import DHTNode, DHTRPCError, DHTTimeoutError, PeerInfo
from node_agent.dht.messages import seal, unseal
from node_agent.dht.reachability import Reachability
from node_agent.dht.transport import MemoryNetwork
from node_agent.identity import Identity
from tests.processes import wait_until_async

FAST = {
    "dial_back_wait": 0.5,
    "dial_back_retry": 1.0,
    "relay_keepalive": 0.3,
    "rpc_timeout": 1.5,
    "relay_forward_timeout": 5.0,
}


async def offer_handler(peer: PeerInfo, payload: dict[str, Any]) -> dict[str, Any]:
    """Stands in for the pool's `rtc.offer` handler: answers who asked and what."""
    return {"answer_to": peer.node_id, "sdp": payload.get("sdp")}


def not_a_relay(swarm: list[DHTNode], hidden: DHTNode) -> DHTNode:
    return next(n for n in swarm if not any(r.endswith(n.node_id.hex()) for r in hidden.relays))


@pytest.fixture
async def udp_swarm() -> AsyncIterator[list[DHTNode]]:
    first = await DHTNode.create(listen="127.0.0.1:0", reachability="public", **FAST)
    nodes = [first]
    for _ in range(4):
        nodes.append(
            await DHTNode.create([first.endpoint], listen="127.0.0.1:0", reachability="public", **FAST)
        )
    yield nodes
    for node in reversed(nodes):
        await node.shutdown()


async def test_observed_address_needs_several_peers_and_dial_back_finds_loopback_reachable(udp_swarm):
    node = await DHTNode.create([udp_swarm[0].endpoint], listen="127.0.0.1:0", **FAST)
    try:
        await node.find_nearest(node.node_id)
        assert node.observed_endpoint == node.endpoint  # at least 3 distinct responders agreed
        await wait_until_async(lambda: node.reachability is Reachability.REACHABLE, timeout=10)
        assert not node.client_mode and node.relays == []
    finally:
        await node.shutdown()


async def test_relayed_rpc_is_sealed_end_to_end_and_only_our_relays_may_push(udp_swarm):
    hidden = await DHTNode.create(
        [udp_swarm[0].endpoint], listen="127.0.0.1:0", reachability="private", **FAST
    )
    hidden.register_rpc("rtc.offer", offer_handler)
    try:
        await wait_until_async(lambda: len(hidden.relays) == 2, timeout=10, what="two relays")
        caller = not_a_relay(udp_swarm, hidden)
        assert hidden.client_mode  # an unreachable node takes no storage duty
        await wait_until_async(
            lambda: all(hidden.node_id not in n.core.routing for n in udp_swarm), timeout=5
        )
        peer, reply = await caller.call_rpc_via_relay(
            hidden.relays[0], hidden.node_id, "rtc.offer", {"sdp": "v=0 x"}, timeout=5
        )
        assert peer.node_id == hidden.node_id
        assert reply == {"answer_to": caller.node_id, "sdp": "v=0 x"}
        relay = next(n for n in udp_swarm if hidden.relays[0].endswith(n.node_id.hex()))
        _, reply = await relay.call_rpc_via_relay(hidden.relays[0], hidden.node_id, "rtc.offer", {}, 10)
        assert reply["answer_to"] == relay.node_id  # a relay reaches the node it relays for through itself
        with pytest.raises(DHTRPCError, match="signalling only"):  # a relay never carries tensors
            await caller.call_rpc_via_relay(hidden.relays[0], hidden.node_id, "expert.forward", {}, timeout=5)
        # A node that is not one of hidden's relays cannot push requests to it.
        rid_inner = seal(caller.identity, "rpc", b"12345678", caller._clock.time(), hidden.node_id, False,
                         {"n": "rtc.offer", "p": {}}, 8192)  # fmt: skip
        outsider = next(n for n in udp_swarm if f"/{n.node_id.hex()}" not in "".join(hidden.relays))
        address = tuple(hidden.endpoint.rsplit(":", 1))
        with pytest.raises(DHTRPCError, match="not one of our relays"):
            await outsider._call(
                (address[0], int(address[1])), "relayed", {"d": rid_inner}, hidden.node_id, 2
            )
    finally:
        await hidden.shutdown()


async def test_hostile_relay_can_drop_but_never_alter_or_forge(udp_swarm):
    hidden = await DHTNode.create(
        [udp_swarm[0].endpoint], listen="127.0.0.1:0", reachability="private", **FAST
    )
    hidden.register_rpc("rtc.offer", offer_handler)
    try:
        await wait_until_async(lambda: len(hidden.relays) == 2, timeout=10, what="two relays")
        caller = not_a_relay(udp_swarm, hidden)
        relay_text = hidden.relays[0]
        relay = next(n for n in udp_swarm if relay_text.endswith(n.node_id.hex()))
        honest = relay.nat.handle_relay

        async def altering(request):
            kind, payload = await honest(request)
            if "d" in payload:
                data = bytearray(payload["d"])
                data[len(data) // 2] ^= 0x01
                payload["d"] = bytes(data)
            return kind, payload

        relay.nat.handle_relay = altering
        with pytest.raises(DHTRPCError, match="fails verification"):
            await caller.call_rpc_via_relay(relay_text, hidden.node_id, "rtc.offer", {"sdp": "v=0"}, 10)

        async def forging(request):  # answers in the hidden node's place, for the right request id
            rid = unseal(request.payload["d"], 65536).rid
            forged = seal(relay.identity, "ok", rid, relay._clock.time(), request.peer.node_id, False,
                          {"p": {"sdp": "v=0 forged"}}, 8192)  # fmt: skip
            return "ok", {"d": forged}

        relay.nat.handle_relay = forging
        with pytest.raises(DHTRPCError, match="fails verification"):
            await caller.call_rpc_via_relay(relay_text, hidden.node_id, "rtc.offer", {"sdp": "v=0"}, 10)

        async def tampering_request(request):  # alters the offer on its way: the hidden node refuses it
            data = bytearray(request.payload["d"])
            data[-10] ^= 0x01
            request.payload["d"] = bytes(data)
            return await honest(request)

        relay.nat.handle_relay = tampering_request
        with pytest.raises(DHTRPCError, match="refused"):
            await caller.call_rpc_via_relay(relay_text, hidden.node_id, "rtc.offer", {"sdp": "v=0"}, 10)
        relay.nat.handle_relay = honest
        _, reply = await caller.call_rpc_via_relay(
            relay_text, hidden.node_id, "rtc.offer", {"sdp": "v=0"}, 10
        )
        assert reply["sdp"] == "v=0"
    finally:
        await hidden.shutdown()


async def test_relay_caps_bound_what_a_reservation_costs(udp_swarm):
    for node in udp_swarm:  # every possible relay allows 2 messages per window
        node.nat.book.caps = type(node.nat.book.caps)(max_messages=2, max_reservations=1)
    hidden = await DHTNode.create(
        [udp_swarm[0].endpoint], listen="127.0.0.1:0", reachability="private", **FAST
    )
    second = await DHTNode.create(
        [udp_swarm[0].endpoint], listen="127.0.0.1:0", reachability="private", **FAST
    )
    hidden.register_rpc("rtc.offer", offer_handler)
    try:
        await wait_until_async(lambda: len(hidden.relays) == 2, timeout=10, what="two relays")
        await wait_until_async(lambda: len(second.relays) == 2, timeout=10, what="two relays")
        # One reservation per relay: the two hidden nodes hold disjoint relays.
        assert not set(hidden.relays) & set(second.relays)
        relay = hidden.relays[0]
        caller = next(n for n in udp_swarm if not relay.endswith(n.node_id.hex()))
        for _ in range(2):
            await caller.call_rpc_via_relay(relay, hidden.node_id, "rtc.offer", {"sdp": "v=0"}, 10)
        with pytest.raises(DHTRPCError, match="messages per"):
            await caller.call_rpc_via_relay(relay, hidden.node_id, "rtc.offer", {"sdp": "v=0"}, 10)
        with pytest.raises(DHTRPCError, match="exceeds"):
            await caller.call_rpc_via_relay(relay, hidden.node_id, "rtc.offer", {"sdp": "x" * 30_000}, 5)
    finally:
        await second.shutdown()
        await hidden.shutdown()


async def test_a_vanished_relay_is_replaced_and_listeners_told(udp_swarm):
    hidden = await DHTNode.create(
        [udp_swarm[0].endpoint], listen="127.0.0.1:0", reachability="private", **FAST
    )
    changes: list[list[str]] = []
    hidden.add_relay_listener(changes.append)
    try:
        await wait_until_async(lambda: len(hidden.relays) == 2, timeout=10, what="two relays")
        gone = next(n for n in udp_swarm if hidden.relays[0].endswith(n.node_id.hex()))
        await gone.shutdown()
        await wait_until_async(
            lambda: (
                len(hidden.relays) == 2 and not any(r.endswith(gone.node_id.hex()) for r in hidden.relays)
            ),
            timeout=10,
            what="the vanished relay replaced",
        )
        assert changes[-1] == hidden.relays
    finally:
        await hidden.shutdown()


async def test_behind_a_filtering_nat_a_node_finds_itself_unreachable_and_reachable_via_relays():
    network = MemoryNetwork()
    first = await DHTNode.create(network=network, **FAST)
    public = [first] + [await DHTNode.create([first.endpoint], network=network, **FAST) for _ in range(5)]
    home = await DHTNode.create([first.endpoint], network=network, behind_nat=True, **FAST)
    home.register_rpc("rtc.offer", offer_handler)
    try:
        await wait_until_async(lambda: home.reachability is Reachability.UNREACHABLE, timeout=10)
        await wait_until_async(
            lambda: all(n.reachability is Reachability.REACHABLE for n in public), timeout=5
        )
        assert home.client_mode and network.filtered_drops > 0
        await wait_until_async(lambda: len(home.relays) == 2, timeout=10, what="two relays")
        caller = await DHTNode.create([first.endpoint], network=network, client_mode=True, **FAST)
        with pytest.raises(DHTTimeoutError):  # directly: the home router drops the stranger's request
            await caller.call_rpc(home.endpoint, "rtc.offer", {"sdp": "v=0"}, timeout=1.0)
        _, reply = await caller.call_rpc_via_relay(
            home.relays[0], home.node_id, "rtc.offer", {"sdp": "v=0"}, 5
        )
        assert reply["answer_to"] == caller.node_id
        await caller.shutdown()
    finally:
        await home.shutdown()
        for node in public:
            await node.shutdown()


async def test_dial_back_and_probe_requests_are_rate_limited():
    network = MemoryNetwork()
    nodes = [await DHTNode.create(network=network, reachability="public", dial_back_burst=2.0)]
    nodes += [
        await DHTNode.create([nodes[0].endpoint], network=network, reachability="public") for _ in range(3)
    ]
    asker = nodes[-1]
    asked = nodes[0]
    try:
        answers = []
        for _ in range(4):
            try:
                response = await asker._call(
                    asked._transport.local_address, "dialback", {"n": bytes(16)}, asked.node_id, 2.0
                )
                answers.append(response.payload.get("sent"))
            except DHTRPCError as exc:
                answers.append(str(exc))
        assert answers[:2] == [True, True] and answers[2:] == ["too many dial-back requests"] * 2
        with pytest.raises(DHTRPCError, match="nonce"):
            await asker._call(asked._transport.local_address, "dialback", {"n": b"short"}, asked.node_id, 2.0)
        with pytest.raises(DHTRPCError, match="probe address"):
            await asker._call(
                asked._transport.local_address,
                "probe",
                {"a": ["nohost", 1], "n": bytes(16)},
                asked.node_id,
                2,
            )
    finally:
        for node in nodes:
            await node.shutdown()


async def test_unreachable_node_refuses_reservations_and_stores(udp_swarm):
    hidden = await DHTNode.create(
        [udp_swarm[0].endpoint], listen="127.0.0.1:0", reachability="private", **FAST
    )
    try:
        host, port = hidden.endpoint.rsplit(":", 1)
        with pytest.raises(DHTRPCError, match="not reachable"):
            await udp_swarm[1]._call((host, int(port)), "reserve", {}, hidden.node_id, 2.0)
        with pytest.raises(DHTRPCError, match="client-mode"):
            await udp_swarm[1]._call((host, int(port)), "store", {"r": []}, hidden.node_id, 2.0)
    finally:
        await hidden.shutdown()


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        ({"to": b"short", "d": b"x"}, "20-byte target"),
        ({"to": [1], "d": b"x"}, "20-byte target"),
        ({"to": bytes(20), "d": "text"}, "must be a datagram"),
        ({"to": bytes(20), "d": b"\x93garbage"}, "malformed"),
        ({"to": bytes(20)}, "must be a datagram"),
    ],
)
async def test_malformed_relay_requests_get_clear_errors(payload, reason):
    network = MemoryNetwork()
    relay = await DHTNode.create(network=network, reachability="public")
    asker = await DHTNode.create([relay.endpoint], network=network, reachability="public")
    try:
        with pytest.raises(DHTRPCError, match=reason):
            await asker._call(relay._transport.local_address, "relay", payload, relay.node_id, 2.0)
        with pytest.raises(DHTRPCError, match="not one of our relays"):
            await asker._call(relay._transport.local_address, "relayed", payload, relay.node_id, 2.0)
    finally:
        await asker.shutdown()
        await relay.shutdown()


def test_hostile_payloads_of_every_new_kind_get_an_answer_never_an_exception() -> None:
    """Arbitrary msgpack payloads for dialback, probe, reserve, relay and relayed: each handler answers ok or
    err (what a datagram from anyone can carry), on one node of the simulator."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from node_agent.dht.api import PeerInfo as Peer
    from node_agent.dht.protocol import Request
    from tests.node_agent.msgpack_strategies import msgpack_values

    loop = asyncio.new_event_loop()
    try:
        node = loop.run_until_complete(DHTNode.create(network=MemoryNetwork(), reachability="public"))
        handlers = {
            "dialback": node.nat.handle_dialback,
            "relay": node.nat.handle_relay,
            "relayed": node.nat.handle_relayed,
        }
        sender = Identity.generate()
        peer = Peer(sender.node_id, sender.public_key_bytes, "127.0.0.9:4000")

        @settings(max_examples=150, deadline=None)
        @given(
            kind=st.sampled_from(["dialback", "probe", "reserve", "relay", "relayed"]),
            payload=st.dictionaries(st.sampled_from(["n", "a", "to", "d", "src", "x"]), msgpack_values),
        )
        def check(kind: str, payload: dict) -> None:
            request = Request(peer, ("127.0.0.9", 4000), b"r" * 8, kind, payload, False)
            if kind in handlers:
                answer_kind, answer = loop.run_until_complete(handlers[kind](request))
            elif kind == "probe":
                answer_kind, answer = node.nat.handle_probe(request, time.time())
            else:
                answer_kind, answer = node.nat.handle_reserve(request, time.time())
            assert answer_kind in ("ok", "err") and isinstance(answer, dict)

        check()
        loop.run_until_complete(node.shutdown())
    finally:
        loop.close()

"""The sans-IO protocol core, fed datagrams directly: no sockets, explicit clock."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from node_agent.dht.api import owner_subkey
from node_agent.dht.config import DHTConfig
from node_agent.dht.protocol import ProtocolCore, Request, Response
from node_agent.dht.records import key_id, sign_record
from node_agent.identity import Identity
from node_agent.wire import pack, pack_message

NOW = 1_800_000_000.0
A_ADDR, B_ADDR, M_ADDR = ("127.0.0.1", 1001), ("127.0.0.1", 1002), ("127.0.0.1", 1003)


def make_core(client_mode: bool = False, **options: object) -> ProtocolCore:
    return ProtocolCore(Identity.generate(), DHTConfig.from_options(**options), client_mode)


def answer_verifications(b: ProtocolCore, a: ProtocolCore) -> None:
    """Do what the adapter does for b's routing actions: ping a at the address it claimed; a answers."""
    while b.actions:
        action = b.actions.pop()
        _rid, ping = b.request("ping", {}, action.candidate_address, action.contact.node_id, NOW)
        request = a.receive(ping, B_ADDR, NOW)
        assert isinstance(request, Request)
        b.receive(a.respond(request, "ok", {}, NOW), A_ADDR, NOW)


def exchange(a: ProtocolCore, b: ProtocolCore, kind: str, payload: dict) -> tuple[Request, Response | None]:
    _rid, data = a.request(kind, payload, B_ADDR, b.identity.node_id, NOW)
    request = b.receive(data, A_ADDR, NOW)
    assert isinstance(request, Request) and request.peer.node_id == a.identity.node_id
    answer_verifications(b, a)
    handler = {"ping": b.handle_ping, "store": b.handle_store, "find": b.handle_find}[kind]
    answer = b.respond(request, *handler(request, NOW), NOW)
    return request, a.receive(answer, B_ADDR, NOW)


def test_ping_round_trip_adds_both_sides_to_routing_tables() -> None:
    a, b = make_core(), make_core()
    _, response = exchange(a, b, "ping", {})
    assert isinstance(response, Response) and response.kind == "ok"
    assert b.identity.node_id in a.routing and a.identity.node_id in b.routing


def test_a_request_alone_does_not_map_its_sender_to_the_source_address() -> None:
    """A request without a pinned recipient, replayed to another node from Mallory's address: the receiver
    answers it but maps the sender's id to that address only if a ping there is answered by that id."""
    a, c = make_core(), make_core()
    _, captured = a.request("ping", {}, B_ADDR, None, NOW)
    assert isinstance(c.receive(captured, M_ADDR, NOW + 1), Request)
    assert a.identity.node_id not in c.routing
    [action] = c.actions
    assert action.candidate_address == M_ADDR and action.contact.node_id == a.identity.node_id
    _rid, ping = c.request("ping", {}, M_ADDR, a.identity.node_id, NOW + 1)
    relayed = a.receive(ping, ("127.0.0.1", 1004), NOW + 1)  # Mallory relays the challenge to Alice
    assert isinstance(relayed, Request)
    assert c.receive(a.respond(relayed, "ok", {}, NOW + 1), A_ADDR, NOW + 1) is None  # not from M_ADDR
    assert c.drops.counts["response from another address"] == 1
    assert a.identity.node_id not in c.routing


def test_client_mode_peers_are_not_added_and_store_nothing() -> None:
    client, server = make_core(client_mode=True), make_core()
    exchange(client, server, "ping", {})
    assert client.identity.node_id not in server.routing and server.identity.node_id in client.routing
    record = sign_record(server.identity, "k", None, 1, NOW + 60)
    _, response = exchange(server, client, "store", {"r": [record.to_wire()]})
    assert response is not None and response.kind == "err" and len(client.store) == 0


def test_response_accepted_only_from_the_request_address_and_node() -> None:
    a, b = make_core(), make_core()
    _rid, data = a.request("ping", {}, B_ADDR, b.identity.node_id, NOW)
    request = b.receive(data, A_ADDR, NOW)
    answer = b.respond(request, "ok", {}, NOW)
    assert a.receive(answer, M_ADDR, NOW) is None
    assert a.drops.counts["response from another address"] == 1
    other = make_core()
    _, data2 = a.request("ping", {}, B_ADDR, other.identity.node_id, NOW)  # expects `other` at B_ADDR
    request2 = other.receive(data2, A_ADDR, NOW)
    answer2 = b.respond(request2, "ok", {}, NOW)  # but b answers from B_ADDR
    assert a.receive(answer2, B_ADDR, NOW) is None
    assert a.drops.counts["response from another node id"] == 1
    assert isinstance(a.receive(answer, B_ADDR, NOW), Response)
    assert a.receive(answer, B_ADDR, NOW) is None  # a response is consumed once


def test_replayed_and_stale_requests_are_refused() -> None:
    a, b = make_core(), make_core()
    _, data = a.request("ping", {}, B_ADDR, None, NOW)
    assert isinstance(b.receive(data, A_ADDR, NOW), Request)
    assert b.receive(data, A_ADDR, NOW + 1) is None
    assert b.drops.counts["replayed request"] == 1
    _, old = a.request("ping", {}, B_ADDR, None, NOW - 3600)
    assert b.receive(old, A_ADDR, NOW) is None
    assert b.drops.counts["timestamp outside the allowed clock skew"] == 1


def test_spoofed_node_id_is_refused() -> None:
    """Mallory claims Alice's public key (hence id) but cannot sign for it."""
    alice, mallory, b = make_core(), make_core(), make_core()
    body = {
        "id": b"\x00" * 8,
        "ts": NOW,
        "pk": alice.identity.public_key_bytes,
        "to": b"",
        "c": False,
        "p": {},
    }
    inner = pack_message("ping", body)
    forged = pack([inner, mallory.identity.sign(inner)])
    assert b.receive(forged, M_ADDR, NOW) is None
    assert b.drops.counts["bad signature"] == 1
    assert alice.identity.node_id not in b.routing


def test_message_for_another_node_is_refused() -> None:
    a, b, c = make_core(), make_core(), make_core()
    _, data = a.request("ping", {}, B_ADDR, c.identity.node_id, NOW)
    assert b.receive(data, A_ADDR, NOW) is None
    assert b.drops.counts["meant for another node"] == 1


def test_store_and_find_round_trip_with_subkeys_from_several_owners() -> None:
    a, b, c = make_core(), make_core(), make_core()
    records = [
        sign_record(a.identity, "grid", owner_subkey("e1", a.identity.node_id), {"v": 1}, NOW + 60),
        sign_record(c.identity, "grid", owner_subkey("e2", c.identity.node_id), {"v": 2}, NOW + 60),
    ]
    _, response = exchange(a, b, "store", {"r": [r.to_wire() for r in records]})
    assert response.payload == {"ok": [True, True]}
    _, found = exchange(c, b, "find", {"q": [[key_id("grid"), "grid"]]})
    nodes, raw_records, truncated, cursor = found.payload["a"][0]
    assert (
        not truncated
        and cursor is None
        and sorted(r[1] for r in raw_records) == sorted(r.subkey for r in records)
    )
    assert [n[0] for n in nodes] == [a.identity.node_id]  # the requester is not told about itself


@pytest.mark.parametrize(
    "make_record",
    [
        # forged record for someone else's owner-protected subkey
        lambda m, victim: sign_record(m, "grid", owner_subkey("e", victim.node_id), "evil", NOW + 60),
        # oversized value
        lambda m, victim: sign_record(m, "big", None, b"x" * 20_000, NOW + 60),
        # expiration far in the future
        lambda m, victim: sign_record(m, "far", None, 1, NOW + 365 * 24 * 3600),
    ],
    ids=["forged-owner-subkey", "oversized", "far-future"],
)
def test_invalid_records_are_refused_and_the_sender_penalised(make_record) -> None:
    mallory, b = make_core(), make_core()
    victim = Identity.generate()
    for _ in range(3):
        record = make_record(mallory.identity, victim)
        _, response = exchange(mallory, b, "store", {"r": [record.to_wire()]})
        assert response.payload == {"ok": [False]}
    assert len(b.store) == 0
    assert b.penalties.is_banned(mallory.identity.node_id, NOW)
    _, data = mallory.request("ping", {}, B_ADDR, None, NOW)
    assert b.receive(data, A_ADDR, NOW) is None  # ignored while banned
    assert not b.penalties.is_banned(mallory.identity.node_id, NOW + 3600)


def test_find_rejects_mismatched_key_and_bad_queries() -> None:
    a, b = make_core(), make_core()
    _, response = exchange(a, b, "find", {"q": [[key_id("x"), "y"]]})
    assert response.kind == "err"
    _, response = exchange(a, b, "find", {"q": "nope"})
    assert response.kind == "err"


def _valid_datagrams() -> list[bytes]:
    a = make_core()
    record = sign_record(a.identity, "k", "s", {"x": 1}, NOW + 60)
    return [
        a.request("store", {"r": [record.to_wire()]}, B_ADDR, None, NOW)[1],
        a.request("find", {"q": [[key_id("k"), "k"]]}, B_ADDR, None, NOW)[1],
    ]


VALID = _valid_datagrams()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.one_of(
        st.binary(max_size=400),
        st.builds(
            lambda base, pos, byte: base[:pos] + bytes([byte]) + base[pos + 1 :],
            st.sampled_from(VALID),
            st.integers(0, 600),
            st.integers(0, 255),
        ),
        st.builds(lambda base, cut: base[:cut], st.sampled_from(VALID), st.integers(0, 600)),
        st.recursive(
            st.none()
            | st.booleans()
            | st.integers(-(2**63), 2**64 - 1)
            | st.floats()
            | st.text(max_size=8)
            | st.binary(max_size=40),
            lambda children: st.lists(children, max_size=6) | st.dictionaries(st.text(max_size=4), children),
            max_leaves=20,
        ).map(lambda obj: msgpack.packb(obj, use_bin_type=True)),
    )
)
def test_random_and_mutated_datagrams_never_crash_or_store_anything(data: bytes) -> None:
    core = make_core()
    event = core.receive(data, A_ADDR, NOW)
    if isinstance(event, Request):
        handler = {"ping": core.handle_ping, "store": core.handle_store, "find": core.handle_find}.get(
            event.kind
        )
        if handler is not None:
            core.respond(event, *handler(event, NOW), NOW)
    # Only an untouched, correctly signed record can ever be stored; any mutation breaks a signature.
    for record, _ in core.store.items(NOW):
        assert record.value_bytes == msgpack.packb({"x": 1}) and record.subkey == "s"


def test_stores_over_the_source_budget_are_dropped_before_any_signature_check() -> None:
    victim = make_core(store_checks_per_second=10.0, store_checks_burst=600.0)
    sender = make_core()
    records = [sign_record(sender.identity, "k", f"s{i}", i, NOW + 60).to_wire() for i in range(256)]
    for expected in (Request, Request, type(None), type(None)):  # 257 checks each: two fit the burst
        _rid, data = sender.request("store", {"r": records}, B_ADDR, victim.identity.node_id, NOW)
        assert isinstance(victim.receive(data, A_ADDR, NOW), expected)
    assert victim.drops.counts["store over the source's rate"] == 2
    # A datagram with a broken signature over the budget is not even verified: no offence, no ban.
    _rid, data = sender.request("store", {"r": records}, B_ADDR, victim.identity.node_id, NOW)
    assert victim.receive(data[:-1] + bytes([data[-1] ^ 1]), A_ADDR, NOW) is None
    assert (
        victim.drops.counts["bad signature"] == 0 and victim.drops.counts["store over the source's rate"] == 3
    )
    # Pings and finds from the same source, and stores from another, are still served.
    _rid, ping = sender.request("ping", {}, B_ADDR, victim.identity.node_id, NOW)
    assert isinstance(victim.receive(ping, A_ADDR, NOW), Request)
    _rid, data = sender.request("store", {"r": records[:1]}, B_ADDR, victim.identity.node_id, NOW)
    assert isinstance(victim.receive(data, ("10.9.9.9", 4000), NOW), Request)
    # The budget refills with time.
    _rid, data = sender.request("store", {"r": records}, B_ADDR, victim.identity.node_id, NOW + 30)
    assert isinstance(victim.receive(data, A_ADDR, NOW + 30), Request)


def test_a_response_nobody_waits_for_is_dropped_before_its_signature_is_checked() -> None:
    a, b = make_core(), make_core()
    _rid, ping = a.request("ping", {}, B_ADDR, b.identity.node_id, NOW)
    request = b.receive(ping, A_ADDR, NOW)
    answer = b.respond(request, "ok", {}, NOW)
    forged = answer[:-1] + bytes([answer[-1] ^ 1])
    a.forget(request.rid)
    assert a.receive(forged, B_ADDR, NOW) is None
    assert a.drops.counts["unexpected or late response"] == 1 and a.drops.counts["bad signature"] == 0

"""A busy node's heartbeat always fits the portal's body limit once signed: graph edges go first, then
replica states, experts last; receipts then fill what is left (hypothesis over node sizes)."""

from __future__ import annotations

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from node_agent.identity import Identity
from node_agent.portal.heartbeat_size import (
    RECEIPT_ROOM_BYTES,
    fit_heartbeat,
    heartbeat_budget,
    with_receipts,
)
from node_agent.portal.schemas import HeartbeatBody, PeerActivity, ReplicaState
from node_agent.portal.signed_body import MAX_BODY_BYTES, sign_body

IDENTITY = Identity.generate()


def _body(peers: int, states: int, experts: int) -> HeartbeatBody:
    return HeartbeatBody(
        credential="t" * 400, node_id=IDENTITY.node_id.hex(), endpoint="198.18.0.7:40000",
        agent_version="0.1.0", platform="Linux-6.1-x86_64", role="server",
        experts=[f"lm.b{i % 64}.{i // 64 % 16}.{i % 16}" for i in range(experts)],
        requests=10**9, samples=10**12, failures=10**6, bytes_in=10**15, bytes_out=10**15,
        samples_per_s=12345.678, uptime_s=1e6,
        peers=[PeerActivity(node_id=f"{i:040x}", requests=10**6 - i) for i in range(peers)],
        replica_states=[ReplicaState(uid=f"lm.b{i % 64}.{i % 16}.{i}", step=10**9, averaged_age_s=123.456)
                        for i in range(states)],
    )  # fmt: skip


def _signed_size(body: HeartbeatBody) -> int:
    raw, _headers = sign_body(IDENTITY, body, 1.7e9)
    return len(raw)


def test_a_small_heartbeat_is_left_alone() -> None:
    body = _body(peers=8, states=4, experts=4)
    assert fit_heartbeat(body) is body


def test_256_peers_and_128_replica_states_fit_with_room_for_receipts() -> None:
    body = _body(peers=256, states=128, experts=16)
    assert _signed_size(body) > MAX_BODY_BYTES  # what a busy node used to send, refused whole
    fitted = fit_heartbeat(body)
    assert fitted.experts == body.experts  # coverage is never traded for graph edges
    assert fitted.peers == body.peers[: len(fitted.peers)]  # the busiest peers stay
    assert len(fitted.peers) >= 32 and len(fitted.replica_states) > 0
    receipts = [f"{i:03d}" + "A" * 380 for i in range(64)]
    full = with_receipts(fitted, receipts)
    assert len(full.receipts) >= RECEIPT_ROOM_BYTES // 400
    assert _signed_size(full) <= MAX_BODY_BYTES


@settings(max_examples=60, deadline=None)
@given(
    peers=st.integers(0, 256),
    states=st.integers(0, 128),
    experts=st.integers(0, 1024),
    receipts=st.integers(0, 64),
)
def test_any_node_size_fits_once_signed(peers: int, states: int, experts: int, receipts: int) -> None:
    fitted = fit_heartbeat(_body(peers, states, experts))
    body = with_receipts(fitted, ["B" * 1400] * receipts)
    assert _signed_size(body) <= MAX_BODY_BYTES
    assert len(msgspec.json.encode(body)) <= heartbeat_budget()
    if experts <= 256:
        assert len(body.experts) == experts  # a node of sane size reports every expert it serves

"""Receipts ride heartbeats only as far as a signed body has room; the rest wait for the next one."""

from __future__ import annotations

import msgspec

from node_agent.portal.heartbeat_size import SIGNED_FIELDS_BYTES, with_receipts
from node_agent.portal.schemas import MAX_RECEIPTS_PER_HEARTBEAT, HeartbeatBody, PeerActivity
from node_agent.portal.signed_body import MAX_BODY_BYTES


def _body(peers: int) -> HeartbeatBody:
    return HeartbeatBody(
        credential="t" * 300, node_id="ab" * 20, endpoint="127.0.0.1:4000", agent_version="0.1",
        platform="Linux", role="server", experts=["ffn.0.0"], requests=1, samples=1, failures=0,
        bytes_in=0, bytes_out=0, samples_per_s=0.0, uptime_s=1.0,
        peers=[PeerActivity(node_id=f"{i:040x}", requests=0) for i in range(peers)],
    )  # fmt: skip


def test_receipts_fill_the_room_left_and_no_more() -> None:
    receipts = [f"{i:03d}" + "A" * 380 for i in range(MAX_RECEIPTS_PER_HEARTBEAT)]
    for peers in (0, 100, 180):
        body = with_receipts(_body(peers), receipts)
        assert len(msgspec.json.encode(body)) <= MAX_BODY_BYTES - SIGNED_FIELDS_BYTES
        assert body.receipts == receipts[: len(body.receipts)]  # the oldest first
    assert len(with_receipts(_body(0), receipts).receipts) >= 30
    assert with_receipts(_body(0), []).receipts == []
    assert with_receipts(_body(256), receipts).receipts == []  # 256 peers alone fill a body: no room

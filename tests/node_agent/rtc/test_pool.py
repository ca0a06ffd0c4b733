from __future__ import annotations

import asyncio
import re

import pytest

from node_agent.rtc.config import RTCOptions
from node_agent.rtc.fingerprint import FingerprintMismatchError, sdp_fingerprints, verify_peer_connection
from node_agent.rtc.pool import OFFER_RPC, ConnectError, ConnectionPool
from node_agent.rtc.rpc import RPCClosedError, RPCError
from tests.node_agent.rtc.handlers import echo
from tests.processes import wait_until_async

OPTIONS = RTCOptions.for_loopback(connect_timeout=4.0, idle_timeout=0.6)


def _flip_fingerprint(sdp: str) -> str:
    def flip(match: re.Match[str]) -> str:
        value = match.group(2)
        return match.group(1) + ("00" if value[:2] != "00" else "11") + value[2:]

    return re.sub(r"(a=fingerprint:\S+ )([0-9A-F:]+)", flip, sdp)


async def test_connection_reused_shared_and_closed_when_idle(two_nodes):
    a, b = two_nodes
    client = await ConnectionPool.create(a, None, OPTIONS)
    server = await ConnectionPool.create(b, echo, OPTIONS)
    try:
        links = await asyncio.gather(*(client.connect(b.node_id, b.endpoint) for _ in range(5)))
        assert len({id(link) for link in links}) == 1  # concurrent callers shared one set-up
        assert await links[0].rpc.call("echo", {"n": 1}, timeout=5) == {"n": 1}
        assert await client.connect(b.node_id, b.endpoint) is links[0]
        await wait_until_async(lambda: len(server.links) == 1, timeout=5)
        await wait_until_async(lambda: not client.links, timeout=4, what="the idle connection closes")
        fresh = await client.connect(b.node_id, b.endpoint)
        assert fresh is not links[0] and await fresh.rpc.call("echo", 2, timeout=5) == 2
    finally:
        await client.close()
        await server.close()


async def test_wrong_fingerprint_in_signed_answer_is_refused(two_nodes):
    a, b = two_nodes
    client = await ConnectionPool.create(a, None, OPTIONS)
    server = await ConnectionPool.create(b, echo, OPTIONS)

    async def tampering_offer_handler(peer, payload):
        reply = await server.handle_offer(peer, payload)
        return {"sdp": _flip_fingerprint(reply["sdp"])}

    b.register_rpc(OFFER_RPC, tampering_offer_handler)
    try:
        with pytest.raises(ConnectError):
            await client.connect(b.node_id, b.endpoint)
        assert not client.links
    finally:
        await client.close()
        await server.close()


async def test_fingerprint_check_against_signed_sdp(loopback_pair):
    verify_peer_connection(loopback_pair.offerer, loopback_pair.answer_sdp)
    verify_peer_connection(loopback_pair.answerer, loopback_pair.offer_sdp)
    assert sdp_fingerprints(loopback_pair.answer_sdp)
    with pytest.raises(FingerprintMismatchError):
        verify_peer_connection(loopback_pair.offerer, _flip_fingerprint(loopback_pair.answer_sdp))
    with pytest.raises(FingerprintMismatchError, match="no supported"):
        verify_peer_connection(loopback_pair.offerer, "v=0\r\n")


async def test_wrong_node_id_or_dead_peer_fails_within_timeout(two_nodes):
    a, b = two_nodes
    client = await ConnectionPool.create(a, None, OPTIONS)
    try:
        with pytest.raises(ConnectError):  # b runs no pool: the offer RPC is refused
            await client.connect(b.node_id, b.endpoint, timeout=3)
        with pytest.raises(ConnectError):  # signalling pinned to the wrong node id
            await client.connect(a.node_id, b.endpoint, timeout=3)
    finally:
        await client.close()


async def test_peer_vanishing_mid_call_then_reconnect(two_nodes):
    a, b = two_nodes
    client = await ConnectionPool.create(a, None, OPTIONS)
    server = await ConnectionPool.create(b, echo, OPTIONS)
    try:
        link = await client.connect(b.node_id, b.endpoint)
        pending = asyncio.ensure_future(link.rpc.call("slow", None, timeout=8))
        # the call is being served when the peer goes
        await wait_until_async(lambda: any(inbound.rpc.in_flight for inbound in server.links), timeout=5)
        await server.close()  # the peer's connections vanish
        with pytest.raises((RPCClosedError, RPCError)):
            await asyncio.wait_for(pending, 9)
        server = await ConnectionPool.create(b, echo, OPTIONS)
        again = await client.connect(b.node_id, b.endpoint)
        assert again is not link and await again.rpc.call("echo", "back", timeout=5) == "back"
    finally:
        await client.close()
        await server.close()

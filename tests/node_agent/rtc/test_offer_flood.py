"""A flood of real signed `rtc.offer`s from fresh keys against a real pool while honest peers keep calling."""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from node_agent.dht import DHTNode
from node_agent.dht.api import DHTError
from node_agent.identity import Identity
from node_agent.portal.gate import CredentialPolicy
from node_agent.portal.tokens import issue_credential
from node_agent.rtc.admission import AdmissionLimits
from node_agent.rtc.config import RTCOptions, apply_process_settings, new_peer_connection
from node_agent.rtc.pool import OFFER_RPC, ConnectionPool, ConnectRefusedError
from tests.node_agent.rtc.handlers import echo
from tests.processes import wait_until_async

LIMITS = AdmissionLimits(max_connections=16, max_unknown=8, max_per_address=12, unknown_offer_rate=20.0)
OPTIONS = RTCOptions.for_loopback(connect_timeout=3.0, idle_timeout=60.0, admission=LIMITS)
PORTAL = Identity.generate()
FLOOD_OFFERS = 240


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def _one_offer(server: DHTNode, sdp: str) -> str:
    """One signed offer from a fresh key (a fresh DHT node), as an attacker sends it: never completes ICE."""
    attacker = await DHTNode.create(listen="127.0.0.1:0")
    try:
        _peer, reply = await attacker.call_rpc(
            server.endpoint, OFFER_RPC, {"sdp": sdp}, timeout=3.0, expected_node_id=server.node_id
        )
        return "answered" if "sdp" in reply else "refused"
    except DHTError:
        return "error"
    finally:
        await attacker.shutdown()


async def _flood(server: DHTNode, sdp: str, results: list[str]) -> None:
    for _ in range(0, FLOOD_OFFERS, 12):  # 12 offers at a time, about 150 a second (as in the report)
        results.extend(await asyncio.gather(*(_one_offer(server, sdp) for _n in range(12))))
        await asyncio.sleep(0.08)


async def test_offer_flood_is_bounded_and_honest_peers_keep_working(two_nodes):
    a, b = two_nodes
    policy = CredentialPolicy("demo", PORTAL.public_key_bytes)
    server = await ConnectionPool.create(b, echo, OPTIONS, credentials=policy)
    honest = await ConnectionPool.create(a, None, OPTIONS)
    newcomer_dht = await DHTNode.create(initial_peers=[b.endpoint], listen="127.0.0.1:0")
    token = issue_credential(
        PORTAL, cid="c1", project="demo", user=1, node_public_key=newcomer_dht.identity.public_key_bytes,
        now=time.time(), ttl=600,
    )  # fmt: skip
    newcomer = await ConnectionPool.create(newcomer_dht, None, OPTIONS, credential=token)
    apply_process_settings(OPTIONS)
    template = new_peer_connection(OPTIONS)
    template.createDataChannel("colearn-rpc")
    await template.setLocalDescription(await template.createOffer())
    sdp = template.localDescription.sdp
    await template.close()
    try:
        link = await honest.connect(b.node_id, b.endpoint)
        assert await link.rpc.call("echo", 0, timeout=5) == 0
        fds_before = _open_fds()
        results: list[str] = []
        flood = asyncio.ensure_future(_flood(b, sdp, results))
        calls = ok = 0
        most_fds = most_inbound = 0
        newcomer_link = None
        while not flood.done():
            calls += 1
            ok += await link.rpc.call("echo", calls, timeout=5) == calls
            most_fds = max(most_fds, _open_fds())
            most_inbound = max(most_inbound, server.handshakes + len(server.links))
            if newcomer_link is None and server.refused_offers > 50:
                newcomer_link = await newcomer.connect(b.node_id, b.endpoint)  # a credentialed newcomer
                assert await newcomer_link.rpc.call("echo", "new", timeout=5) == "new"
            await asyncio.sleep(0.02)
        await flood
        assert ok == calls >= 5, "the honest connection failed during the flood"
        assert newcomer_link is not None and newcomer_link.alive
        assert results.count("refused") > FLOOD_OFFERS / 2 and results.count("error") == 0
        assert most_inbound <= LIMITS.max_connections
        # each admitted handshake holds a socket or two; the attackers' own DHT sockets are ~12 more
        assert most_fds - fds_before < 2 * LIMITS.max_connections + 40, (fds_before, most_fds)
        # unknown handshakes that never complete are closed after connect_timeout
        await wait_until_async(lambda: server.handshakes == 0, timeout=6)
        assert await link.rpc.call("echo", "after", timeout=5) == "after"
        print({"flood": {r: results.count(r) for r in set(results)}, "fds": most_fds - fds_before})

        # a known peer (its key made calls before) whose connection closed gets back in during a flood
        await honest.close()
        await wait_until_async(lambda: server.admission.is_known(a.node_id), timeout=5)
        honest = await ConnectionPool.create(a, None, OPTIONS)
        again: list[str] = []
        flood = asyncio.ensure_future(_flood(b, sdp, again))
        await wait_until_async(lambda: server.refused_offers >= 50 + results.count("refused"), timeout=30)
        link = await honest.connect(b.node_id, b.endpoint)
        assert await link.rpc.call("echo", "back", timeout=5) == "back"
        await flood
    finally:
        await newcomer.close()
        await newcomer_dht.shutdown()
        await honest.close()
        await server.close()


async def test_refusal_is_an_answer_distinguishable_from_a_failure(two_nodes):
    a, b = two_nodes
    closed = RTCOptions.for_loopback(
        connect_timeout=3.0, admission=AdmissionLimits(unknown_offer_rate=0.0, unknown_offer_burst=0.0)
    )
    server = await ConnectionPool.create(b, echo, closed)
    stranger = await ConnectionPool.create(a, None, OPTIONS)
    try:
        with pytest.raises(ConnectRefusedError, match="offer rate of unknown keys"):
            await stranger.connect(b.node_id, b.endpoint)
        assert server.refused_offers == 1 and server.handshakes == 0 and not server.links
    finally:
        await stranger.close()
        await server.close()

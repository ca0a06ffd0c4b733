"""Why an inbound connection is dropped, in the node's own log; and same-machine peers: 127.0.0.1 is offered
to them (and only to them), and a wildcard-bound node answers a 127.0.0.1-bound caller."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from node_agent.dht import DHTNode
from node_agent.dht.endpoints import outward_ip
from node_agent.rtc.config import RTCOptions, apply_process_settings, new_peer_connection
from node_agent.rtc.pool import OFFER_RPC, ConnectionPool
from tests.node_agent.rtc.handlers import echo
from tests.processes import wait_until_async


async def test_an_answered_offer_that_never_connects_is_dropped_with_its_reason(
    two_nodes: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """The caller sends a real offer, gets the answer and then never starts ICE (its side of the
    connection is gone): the node logs why it drops the connection, naming what it offered."""
    a, b = two_nodes
    server = await ConnectionPool.create(b, echo, RTCOptions.for_loopback(connect_timeout=1.0))
    options = RTCOptions.for_loopback()
    apply_process_settings(options)
    caller = new_peer_connection(options)
    caller.createDataChannel("colearn-rpc")
    await caller.setLocalDescription(await caller.createOffer())
    caplog.set_level(logging.INFO, logger="node_agent.rtc.pool")
    try:
        _peer, reply = await a.call_rpc(b.endpoint, OFFER_RPC, {"sdp": caller.localDescription.sdp}, 5.0)
        assert reply["sdp"].startswith("v=0")
        await caller.close()
        await wait_until_async(lambda: server.last_inbound_failure != "", timeout=10)
    finally:
        await server.close()
    reason = server.last_inbound_failure
    assert "no ICE connectivity check from the caller succeeded within 1 s" in reason
    assert "127.0.0.1:" in reason  # the candidates it answered with
    assert f"dropping inbound connection from {a.node_id.hex()[:8]}: {reason}" in caplog.text


async def test_loopback_candidates_go_to_same_machine_peers_only(two_nodes: Any) -> None:
    a, _ = two_nodes
    pool = await ConnectionPool.create(a, None, RTCOptions())
    try:
        assert pool._options_towards("127.0.0.1").loopback
        assert pool._options_towards(outward_ip()).loopback
        assert not pool._options_towards("203.0.113.7").loopback
        assert not pool._options_towards("not an address").loopback
    finally:
        await pool.close()
    off = await ConnectionPool.create(a, None, RTCOptions(same_machine_loopback=False))
    try:
        assert not off._options_towards("127.0.0.1").loopback
    finally:
        await off.close()


@pytest.mark.skipif(outward_ip() == "127.0.0.1", reason="needs an interface besides loopback")
async def test_a_wildcard_bound_node_reaches_a_loopback_bound_caller() -> None:
    """What `node-agent join` (DHT on 0.0.0.0, advertised at this machine's address) and a trainer on
    127.0.0.1 do on one machine: the node's replies come from 127.0.0.1 and are accepted; the data channel
    opens with the default options on both sides."""
    node = await DHTNode.create(listen="0.0.0.0:0", rpc_timeout=2.0)
    caller = await DHTNode.create(initial_peers=[node.endpoint], listen="127.0.0.1:0", client_mode=True)
    served = await ConnectionPool.create(node, echo, RTCOptions(connect_timeout=5.0))
    calling = await ConnectionPool.create(caller, None, RTCOptions(connect_timeout=5.0))
    try:
        assert not node.endpoint.startswith("127.")
        link = await calling.connect(node.node_id, node.endpoint)
        assert await link.rpc.call("ping", {"x": 1}, 5.0) == {"x": 1}
    finally:
        await calling.close()
        await served.close()
        await caller.shutdown()
        await node.shutdown()


def test_an_agent_says_when_only_this_machine_can_reach_it() -> None:
    from node_agent.portal.runtime import only_loopback_reachable

    assert only_loopback_reachable(RTCOptions.for_loopback())
    assert not only_loopback_reachable(RTCOptions(host_addresses=("192.0.2.9",)))

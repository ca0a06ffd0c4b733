"""`probe_node` over real WebRTC connections: a real expert server is serving; a node answering `info`
with garbage or about other experts is reachable but not serving; one whose offers go nowhere is
unreachable. Each answer says why."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from node_agent.dht import DHTNode
from node_agent.moe.api import ExpertProtocolError
from node_agent.moe.probe import REACHABLE, SERVING, UNREACHABLE, check_info_reply, probe_node
from node_agent.rtc.config import RTCOptions
from node_agent.rtc.pool import ConnectionPool
from node_agent.rtc.rpc import RPCHandlerError

OPTIONS = RTCOptions.for_loopback(connect_timeout=3.0)
GOOD_SCHEMA = [{"dtype": "float32", "shape": [None, 8]}]


@pytest.fixture
async def prober(bootstrap_node: DHTNode) -> AsyncIterator[ConnectionPool]:
    dht = await DHTNode.create(
        initial_peers=[bootstrap_node.endpoint], listen="127.0.0.1:0", client_mode=True
    )
    pool = await ConnectionPool.create(dht, None, OPTIONS)
    yield pool
    await pool.close()
    await dht.shutdown()


async def test_a_real_expert_server_is_serving(make_expert_server: Any, prober: ConnectionPool) -> None:
    server = await make_expert_server("ffn.[0:2].0")
    uids = sorted(server.backends)
    result = await probe_node(prober, server.dht.node_id, server.dht.endpoint, uids, timeout=5.0)
    assert result.state == SERVING and result.serving == tuple(uids) and result.reason == ""
    assert prober.links == []  # the prober keeps no connection open


def hostile(reply: Any):
    async def handler(method: str, body: Any) -> Any:
        if isinstance(reply, Exception):
            raise reply
        return reply(body) if callable(reply) else reply

    return handler


@pytest.mark.parametrize(
    ("reply", "why"),
    [
        ("garbage", "malformed info reply"),
        ({"uid": "ffn.9.9", "outputs": GOOD_SCHEMA}, "info answered for another expert"),
        ({"outputs": [{"dtype": "evil", "shape": [1]}]}, "malformed info schema"),
        ({"outputs": [{"dtype": "float32", "shape": "x" * 10_000}]}, "malformed info schema"),
        (RPCHandlerError("unknown_expert", "no such expert"), "no such expert"),
    ],
)
async def test_a_node_answering_info_wrongly_is_reachable_but_not_serving(
    bootstrap_node: DHTNode, prober: ConnectionPool, reply: Any, why: str
) -> None:
    dht = await DHTNode.create(initial_peers=[bootstrap_node.endpoint], listen="127.0.0.1:0")
    pool = await ConnectionPool.create(dht, hostile(reply), OPTIONS)
    try:
        result = await probe_node(prober, dht.node_id, dht.endpoint, ["ffn.0.0"], timeout=5.0)
    finally:
        await pool.close()
        await dht.shutdown()
    assert result.state == REACHABLE and result.serving == ()
    assert result.reason.startswith("connected, but ffn.0.0") and why in result.reason
    assert len(result.reason) <= 200


async def test_one_wrong_expert_of_two_is_named(bootstrap_node: DHTNode, prober: ConnectionPool) -> None:
    answers = lambda body: {"uid": body["uid"], "outputs": GOOD_SCHEMA} if body["uid"] == "ffn.0.0" else 7  # noqa: E731
    dht = await DHTNode.create(initial_peers=[bootstrap_node.endpoint], listen="127.0.0.1:0")
    pool = await ConnectionPool.create(dht, hostile(answers), OPTIONS)
    try:
        result = await probe_node(prober, dht.node_id, dht.endpoint, ["ffn.0.0", "ffn.0.1"], timeout=5.0)
    finally:
        await pool.close()
        await dht.shutdown()
    assert result.state == REACHABLE and result.serving == ("ffn.0.0",) and "ffn.0.1" in result.reason


async def test_a_node_whose_offers_go_nowhere_is_unreachable_within_the_timeout(
    bootstrap_node: DHTNode, prober: ConnectionPool
) -> None:
    dht = await DHTNode.create(initial_peers=[bootstrap_node.endpoint], listen="127.0.0.1:0")
    dht.register_rpc("rtc.offer", lambda peer, payload: asyncio.Event().wait())
    try:
        loop = asyncio.get_running_loop()
        started = loop.time()
        result = await probe_node(prober, dht.node_id, dht.endpoint, ["ffn.0.0"], timeout=1.5)
        assert loop.time() - started < 3.0
    finally:
        await dht.shutdown()
    assert result.state == UNREACHABLE and result.reason.startswith("no connection")


def test_check_info_reply_accepts_a_server_reply_and_refuses_others() -> None:
    assert len(check_info_reply("ffn.0.0", {"uid": "ffn.0.0", "outputs": GOOD_SCHEMA})) == 1
    for bad in (None, [], {"outputs": "x"}, {"uid": 3, "outputs": GOOD_SCHEMA}, {"outputs": [None]}):
        with pytest.raises(ExpertProtocolError):
            check_info_reply("ffn.0.0", bad)


@pytest.mark.parametrize("endpoint", ["garbage", "127.0.0.1:0", "1.2.3.4:99999", "[::1]:80", "a" * 300])
async def test_a_hostile_announced_endpoint_is_unreachable_not_an_error(
    prober: ConnectionPool, endpoint: str
) -> None:
    result = await probe_node(prober, b"\x01" * 20, endpoint, ["ffn.0.0"], timeout=2.0)
    assert result.state == UNREACHABLE and result.reason.startswith("no connection")
    assert len(result.reason) <= 200

"""An expert server that is unreachable from outside serves a trainer through relays (real DHT, real aiortc on
127.0.0.1): its announcements carry its relays, and a relay that vanishes is replaced in its announcements."""

from __future__ import annotations

import asyncio

import torch

from node_agent.dht import DHTNode
from node_agent.moe.client import get_experts
from node_agent.moe.server.server import ExpertServer, ServerOptions
from tests.node_agent.moe.conftest import LOOPBACK_RTC, make_backends
from tests.processes import wait_until_async

FAST = {"relay_keepalive": 0.5, "rpc_timeout": 1.0}


async def _resolve(caller, uid):
    (handle,) = await asyncio.wrap_future(caller.run(get_experts(caller.dht, [uid])))
    return handle


async def test_unreachable_server_is_reached_through_its_relays_and_a_lost_relay_is_replaced(
    bootstrap_node, make_caller
):
    public = [await DHTNode.create([bootstrap_node.endpoint], listen="127.0.0.1:0", **FAST) for _ in range(2)]
    dht = await DHTNode.create(
        [bootstrap_node.endpoint], listen="127.0.0.1:0", reachability="private", **FAST
    )
    await wait_until_async(lambda: len(dht.relays) == 2, timeout=10, what="two relays")
    server = await ExpertServer.create(
        dht, make_backends("ffn.0", hidden_dim=8), ServerOptions(max_wait=0.002), LOOPBACK_RTC
    )
    try:
        caller = await make_caller()
        handle = await _resolve(caller, "ffn.0")
        assert handle.node_id == dht.node_id and sorted(handle.relays) == dht.relays
        x = torch.randn(3, 8)
        (out,) = await asyncio.wrap_future(caller.forward(handle, [x], timeout=10))
        assert out.shape == (3, 8)

        gone = next(n for n in public if any(r.endswith(n.node_id.hex()) for r in dht.relays))
        await gone.shutdown()
        lost = f"/{gone.node_id.hex()}"

        async def announced_without_lost_relay() -> bool:
            found = await _resolve(caller, "ffn.0")
            return found is not None and len(found.relays) == 2 and not any(lost in r for r in found.relays)

        await wait_until_async(announced_without_lost_relay, timeout=15, what="re-announced relays")
        fresh = await make_caller()  # a new trainer signals through the new relays
        (out,) = await asyncio.wrap_future(fresh.forward(await _resolve(fresh, "ffn.0"), [x], timeout=10))
        assert out.shape == (3, 8)
    finally:
        await server.shutdown()
        await dht.shutdown()
        for node in public:
            await node.shutdown()

"""Connection set-up through a relay: real DHT nodes on 127.0.0.1, real aiortc peer connections."""

from __future__ import annotations

import pytest

from node_agent.dht import DHTNode
from node_agent.rtc.config import RTCOptions
from node_agent.rtc.pool import ConnectError, ConnectionPool
from tests.node_agent.rtc.handlers import echo
from tests.processes import wait_until_async

OPTIONS = RTCOptions.for_loopback(connect_timeout=6.0)
FAST = {"relay_keepalive": 0.5, "rpc_timeout": 1.0}


async def test_offer_and_answer_travel_through_a_relay_and_a_tampering_relay_is_skipped():
    relays = [await DHTNode.create(listen="127.0.0.1:0", reachability="public", **FAST)]
    relays.append(
        await DHTNode.create([relays[0].endpoint], listen="127.0.0.1:0", reachability="public", **FAST)
    )
    hidden = await DHTNode.create([relays[0].endpoint], listen="127.0.0.1:0", reachability="private", **FAST)
    trainer = await DHTNode.create([relays[0].endpoint], listen="127.0.0.1:0", client_mode=True, **FAST)
    server = await ConnectionPool.create(hidden, echo, OPTIONS)
    client = await ConnectionPool.create(trainer, None, OPTIONS)
    try:
        await wait_until_async(lambda: len(hidden.relays) == 2, timeout=10, what="two relays")
        # The first relay alters every answer it passes on; the second is honest.
        bad = next(r for r in relays if hidden.relays[0].endswith(r.node_id.hex()))
        honest = bad.nat.handle_relay

        async def altering(request):
            kind, payload = await honest(request)
            if "d" in payload:
                payload["d"] = payload["d"].replace(b"a=fingerprint", b"a=fingerprinx")
            return kind, payload

        bad.nat.handle_relay = altering
        link = await client.connect(hidden.node_id, "127.0.0.1:9", relays=hidden.relays)
        assert await link.rpc.call("echo", {"via": "relay"}, timeout=5) == {"via": "relay"}
        await wait_until_async(lambda: len(server.links) == 1, timeout=5)
        bad.nat.handle_relay = honest
        await client.close()
        client = await ConnectionPool.create(trainer, None, OPTIONS)
        for relay in relays:
            await relay.shutdown()
        with pytest.raises(ConnectError, match="through its relays"):
            await client.connect(hidden.node_id, "127.0.0.1:9", timeout=8, relays=hidden.relays)
    finally:
        await client.close()
        await server.close()
        for node in (trainer, hidden, *relays):
            await node.shutdown()

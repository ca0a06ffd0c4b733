"""A peer that is unreachable from outside averages with reachable ones (real DHT nodes and aiortc on
127.0.0.1): its declaration names its relays, and the others' offers to it travel through them.
(Across real NATs, with STUN and TURN: `tests/e2e/test_nat_averaging.py`.)"""

from __future__ import annotations

import asyncio
from typing import Any

import torch

from node_agent.averaging import AveragingOptions, DecentralizedAverager, RoundReport
from node_agent.averaging.records import Declaration
from node_agent.dht import DHTNode
from node_agent.rtc.pool import ConnectionPool
from node_agent.tensor_codec import Compression
from tests.node_agent.averaging.swarm import RTC
from tests.processes import wait_until_async

FAST = {"relay_keepalive": 0.5, "rpc_timeout": 1.0}


async def _staggered(
    first: list[DecentralizedAverager], then: list[DecentralizedAverager], tag: str
) -> list[RoundReport]:
    """Step `first` (in order, a moment apart: the first declared expires first and leads), then `then`,
    under a key of their own (`tag`: no declarations of an earlier round in the way)."""
    steps = []
    for averager in [*first, *then]:
        steps.append(asyncio.ensure_future(averager.step(tag=tag)))
        await asyncio.sleep(0.3)
    return await asyncio.wait_for(asyncio.gather(*steps), 60)


async def test_an_unreachable_peer_is_reached_through_its_relays_and_the_mean_is_exact():
    root = await DHTNode.create(listen="127.0.0.1:0", reachability="public", **FAST)
    nodes = [
        await DHTNode.create([root.endpoint], listen="127.0.0.1:0", reachability="public", **FAST)
        for _ in range(2)
    ]
    hidden = await DHTNode.create([root.endpoint], listen="127.0.0.1:0", reachability="private", **FAST)
    nodes.append(hidden)
    relayed: list[Any] = []  # what the hidden peer's relays passed on to it (offers, the only relayable rpc)
    honest = hidden.nat.handle_relayed

    async def counting(request: Any) -> Any:
        relayed.append(request)
        return await honest(request)

    hidden.nat.handle_relayed = counting  # type: ignore[method-assign]
    pools: list[ConnectionPool] = []
    averagers: list[DecentralizedAverager] = []
    inputs = [torch.randn(5000, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    try:
        await wait_until_async(lambda: len(hidden.relays) == 2, timeout=10, what="two relays")
        options = AveragingOptions(target_group_size=3, min_group_size=3, compression=Compression.NONE)
        for node, tensor in zip(nodes, inputs, strict=True):
            pools.append(await ConnectionPool.create(node, None, RTC))
            averagers.append(
                await DecentralizedAverager.create(node, pools[-1], "relayed", [tensor.clone()], options)
            )

        # Round 1: a public peer leads, the hidden one joins last: the other follower (lower index) dials it
        # through the relays the roster names.
        reports = await _staggered(averagers[:2], averagers[2:], "r1")
        assert [r.index for r in reports] == [0, 1, 2] and all(r.complete for r in reports), reports
        expected = sum(inputs) / 3
        for averager in averagers:
            torch.testing.assert_close(averager.tensors[0], expected)
        assert relayed, "the roster's relays carried the offer to the unreachable member"
        found = await nodes[0].get(averagers[2].group_key, latest=True)
        declarations = {item.owner: Declaration.from_wire(item.value, item.owner) for item in found.values()}
        assert declarations[hidden.node_id].relays == tuple(hidden.relays)
        assert all(not d.relays for owner, d in declarations.items() if owner != hidden.node_id)

        # Round 2: the hidden peer leads; the others join it through the relays its declaration names.
        relayed.clear()
        reports = await _staggered(averagers[2:], averagers[:2], "r2")
        assert reports[0].index == 0 and all(r.complete for r in reports), reports  # [hidden, public...]
        for averager in averagers:
            torch.testing.assert_close(averager.tensors[0], expected)
        # (the first public peer has no outbound link to it yet; the second kept the one it opened in round 1)
        assert relayed, "a joiner's offer went through the leader's relays"
    finally:
        for averager in averagers:
            await averager.shutdown()
        for pool in pools:
            await pool.close()
        for node in (*nodes, root):
            await node.shutdown()

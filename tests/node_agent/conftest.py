"""Shared fixtures for node agent tests: real DHT nodes on 127.0.0.1 with free ports."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from node_agent.dht.node import DHTNode

SwarmFactory = Callable[..., Awaitable[list[DHTNode]]]


@pytest.fixture
async def bootstrap_node() -> AsyncIterator[DHTNode]:
    """A DHT-only node on 127.0.0.1 with a free UDP port; pass ``bootstrap_node.endpoint`` as initial peer."""
    node = await DHTNode.create(listen="127.0.0.1:0")
    yield node
    await node.shutdown()


@pytest.fixture
async def dht_swarm() -> AsyncIterator[SwarmFactory]:
    """Factory: ``await dht_swarm(20, **options)`` starts that many linked nodes; all shut down afterwards."""
    started: list[DHTNode] = []

    async def make(count: int, **options: object) -> list[DHTNode]:
        first = await DHTNode.create(listen="127.0.0.1:0", **options)
        started.append(first)
        nodes = [first]
        for start in range(1, count, 8):  # join in small batches, each through a few earlier nodes
            batch = await asyncio.gather(
                *(
                    DHTNode.create(
                        initial_peers=[n.endpoint for n in nodes[-3:]], listen="127.0.0.1:0", **options
                    )
                    for _ in range(start, min(count, start + 8))
                )
            )
            started.extend(batch)
            nodes.extend(batch)
        return nodes

    yield make
    await asyncio.gather(*(node.shutdown() for node in started))

"""A few averaging peers in one process: real DHT nodes, real WebRTC pools on 127.0.0.1."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass

import torch

from node_agent.averaging import AveragingOptions, DecentralizedAverager
from node_agent.dht import DHTNode
from node_agent.rtc.config import RTCOptions
from node_agent.rtc.pool import ConnectionPool

RTC = RTCOptions.for_loopback(connect_timeout=5.0)


@dataclass
class Peer:
    dht: DHTNode
    pool: ConnectionPool
    averager: DecentralizedAverager
    tensors: list[torch.Tensor]

    async def stop(self) -> None:
        await self.averager.shutdown()
        await self.pool.close()
        await self.dht.shutdown()


@contextlib.asynccontextmanager
async def averaging_peers(
    tensors: Sequence[list[torch.Tensor]],
    options: AveragingOptions | Callable[[DHTNode], AveragingOptions],
    prefix: str = "test",
) -> AsyncIterator[list[Peer]]:
    """`options`: the same for all, or built per peer from its DHT node (e.g. its own credential)."""
    root = await DHTNode.create(listen="127.0.0.1:0")
    peers: list[Peer] = []
    try:
        for own in tensors:
            dht = await DHTNode.create(initial_peers=[root.endpoint], listen="127.0.0.1:0")
            pool = await ConnectionPool.create(dht, None, RTC)
            own_options = options(dht) if callable(options) else options
            averager = await DecentralizedAverager.create(dht, pool, prefix, own, own_options)
            peers.append(Peer(dht, pool, averager, own))
        yield peers
    finally:
        for peer in peers:
            with contextlib.suppress(Exception):
                await peer.stop()
        await root.shutdown()

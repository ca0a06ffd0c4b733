"""Loopback pair: two real aiortc peer connections in one process, SDP handed across directly; `two_nodes`:
two DHT nodes on 127.0.0.1 for connection-pool tests."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from aiortc import RTCPeerConnection

from node_agent.dht import DHTNode
from node_agent.rtc.config import RTCOptions, apply_process_settings, new_peer_connection


@pytest.fixture
async def two_nodes() -> AsyncIterator[tuple[DHTNode, DHTNode]]:
    a = await DHTNode.create(listen="127.0.0.1:0")
    b = await DHTNode.create(initial_peers=[a.endpoint], listen="127.0.0.1:0")
    yield a, b
    await b.shutdown()
    await a.shutdown()


@dataclass
class LoopbackPair:
    offerer: RTCPeerConnection
    answerer: RTCPeerConnection
    offer_channel: Any
    answer_channel: Any
    offer_sdp: str
    answer_sdp: str


async def connect_pair(label: str = "test") -> LoopbackPair:
    options = RTCOptions.for_loopback()
    apply_process_settings(options)
    a, b = new_peer_connection(options), new_peer_connection(options)
    channel = a.createDataChannel(label)
    remote: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    b.on("datachannel", remote.set_result)
    opened = asyncio.Event()
    channel.on("open", opened.set)
    await a.setLocalDescription(await a.createOffer())
    await b.setRemoteDescription(a.localDescription)
    await b.setLocalDescription(await b.createAnswer())
    await a.setRemoteDescription(b.localDescription)
    async with asyncio.timeout(10):
        await opened.wait()
        answer_channel = await remote
    return LoopbackPair(a, b, channel, answer_channel, a.localDescription.sdp, b.localDescription.sdp)


@pytest.fixture
async def loopback_pair() -> AsyncIterator[LoopbackPair]:
    pair = await connect_pair()
    yield pair
    await pair.offerer.close()
    await pair.answerer.close()

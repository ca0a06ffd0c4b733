"""Large SCTP chunks between two agents on one machine: negotiated, loopback only, data intact both ways."""

from __future__ import annotations

import os
from types import SimpleNamespace

from node_agent.rtc.config import RTCOptions
from node_agent.rtc.large_records import (
    LARGE_CHUNK_USER_DATA,
    enable_large_chunks,
    selected_path_is_loopback,
)
from node_agent.rtc.pool import ConnectionPool
from tests.node_agent.rtc.handlers import echo
from tests.processes import wait_until_async

OPTIONS = RTCOptions.for_loopback(connect_timeout=4.0)


def _chunk_class(link) -> str:
    return type(link.peer_connection.sctp).__name__


async def _round_trip(link, size: int) -> None:
    payload = os.urandom(size)
    assert await link.rpc.call("echo", payload, timeout=10) == payload


async def test_loopback_peers_that_read_whole_records_use_large_chunks_both_ways(two_nodes):
    a, b = two_nodes
    client = await ConnectionPool.create(a, None, OPTIONS)
    server = await ConnectionPool.create(b, echo, OPTIONS)
    try:
        link = await client.connect(b.node_id, b.endpoint)
        assert selected_path_is_loopback(link.peer_connection)
        assert _chunk_class(link) == "LargeChunkSctpTransport"
        (inbound,) = await wait_until_async(lambda: server.links, timeout=5)
        assert _chunk_class(inbound) == "LargeChunkSctpTransport"
        for size in (1, LARGE_CHUNK_USER_DATA - 1, LARGE_CHUNK_USER_DATA + 1, 3 * 2**20 + 17):
            await _round_trip(link, size)  # many records each way, reassembled exactly
    finally:
        await client.close()
        await server.close()


async def test_standard_chunks_when_disabled_and_interoperable_with_a_large_chunk_peer(two_nodes):
    a, b = two_nodes
    plain = RTCOptions.for_loopback(connect_timeout=4.0, large_chunks_on_loopback=False)
    client = await ConnectionPool.create(a, None, plain)
    server = await ConnectionPool.create(b, echo, OPTIONS)
    try:
        link = await client.connect(b.node_id, b.endpoint)
        assert _chunk_class(link) == "RTCSctpTransport"  # this side chose standard chunks
        await _round_trip(link, 2 * 2**20 + 5)  # the other side may still send large ones: both work
    finally:
        await client.close()
        await server.close()


def _pair(local: str, remote: str) -> SimpleNamespace:
    return SimpleNamespace(local_addr=(local, 1), remote_addr=(remote, 2))


def _connection_with(*pairs: SimpleNamespace) -> SimpleNamespace:
    ice = SimpleNamespace(_nominated=dict(enumerate(pairs)))
    return SimpleNamespace(
        sctp=SimpleNamespace(transport=SimpleNamespace(transport=SimpleNamespace(_connection=ice)))
    )


def test_only_a_path_loopback_at_both_ends_counts():
    assert selected_path_is_loopback(_connection_with(_pair("127.0.0.1", "127.0.0.1")))
    assert selected_path_is_loopback(_connection_with(_pair("::1", "::1")))
    assert not selected_path_is_loopback(_connection_with(_pair("127.0.0.1", "192.168.1.7")))
    assert not selected_path_is_loopback(_connection_with(_pair("10.0.0.2", "10.0.0.3")))
    assert not selected_path_is_loopback(_connection_with())  # nothing nominated yet
    assert not selected_path_is_loopback(SimpleNamespace(sctp=None))
    assert not selected_path_is_loopback(_connection_with(_pair("not-an-ip", "127.0.0.1")))


def test_enabling_large_chunks_on_something_else_changes_nothing():
    assert not enable_large_chunks(SimpleNamespace(sctp=None))
    odd = SimpleNamespace(sctp=SimpleNamespace())
    assert not enable_large_chunks(odd) and type(odd.sctp) is SimpleNamespace

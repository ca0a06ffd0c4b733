"""Host candidates are chosen per connection: pools and connections with different settings in one process
gather with their own addresses, concurrently, and aioice's default is left alone for everyone else."""

from __future__ import annotations

import asyncio
import re

import aioice.ice

from node_agent.rtc.config import RTCOptions, apply_process_settings, new_peer_connection
from node_agent.rtc.host_candidates import HostCandidates, original_get_host_addresses
from node_agent.rtc.pool import ConnectionPool
from tests.node_agent.rtc.handlers import echo

#: Another loopback address (Linux routes all of 127/8 to lo): a setting no other pool of the tests uses.
OTHER = "127.0.0.2"
_HOST_CANDIDATE = re.compile(r"^a=candidate:\S+ \d+ udp \d+ (\S+) \d+ typ host", re.MULTILINE)


def test_policy_offers_exactly_the_given_addresses_or_adds_loopback():
    interfaces = lambda: ["10.0.0.5"]  # noqa: E731
    assert HostCandidates(only=("127.0.0.2",)).addresses(interfaces, use_ipv4=True) == ["127.0.0.2"]
    assert HostCandidates(loopback=True).addresses(interfaces, use_ipv4=True) == ["10.0.0.5", "127.0.0.1"]
    assert HostCandidates(loopback=True).addresses(interfaces, use_ipv4=False) == ["10.0.0.5"]
    assert RTCOptions().host_candidates() is None
    assert RTCOptions.for_loopback().host_candidates() == HostCandidates(True, ("127.0.0.1",))


async def _host_addresses(options: RTCOptions) -> set[str]:
    pc = new_peer_connection(options)
    try:
        pc.createDataChannel("probe")
        await pc.setLocalDescription(await pc.createOffer())
        return set(_HOST_CANDIDATE.findall(pc.localDescription.sdp))
    finally:
        await pc.close()


async def test_concurrent_connections_gather_with_their_own_host_addresses():
    loopback, other, default = RTCOptions.for_loopback(), RTCOptions(host_addresses=(OTHER,)), RTCOptions()
    for options in (loopback, other, default):
        apply_process_settings(options)  # the old process-wide override: the last caller won
    async with asyncio.timeout(20):
        first, second, plain = await asyncio.gather(
            _host_addresses(loopback), _host_addresses(other), _host_addresses(default)
        )
    assert first == {"127.0.0.1"}
    assert second == {"127.0.0.2"}
    assert not plain & {"127.0.0.1", "127.0.0.2"}  # aioice's own choice: never loopback
    # Outside a connection's gathering, aioice's function answers as aioice does.
    assert aioice.ice.get_host_addresses(True, False) == original_get_host_addresses()(True, False)


async def test_two_pools_in_one_process_keep_their_own_addresses(two_nodes):
    a, b = two_nodes
    client = await ConnectionPool.create(a, None, RTCOptions.for_loopback(connect_timeout=5.0))
    # Created second: with process-wide state its setting would also have applied to the client's connections.
    server = await ConnectionPool.create(b, echo, RTCOptions(host_addresses=(OTHER,), connect_timeout=5.0))
    try:
        link = await client.connect(b.node_id, b.endpoint)
        assert await link.rpc.call("echo", b"ping", timeout=5) == b"ping"
        (pair,) = link.peer_connection.sctp.transport.transport._connection._nominated.values()
        assert pair.local_addr[0] == "127.0.0.1"
        assert pair.remote_addr[0] == "127.0.0.2"
        assert set(_HOST_CANDIDATE.findall(link.peer_connection.localDescription.sdp)) == {"127.0.0.1"}
        assert set(_HOST_CANDIDATE.findall(link.peer_connection.remoteDescription.sdp)) == {"127.0.0.2"}
    finally:
        await client.close()
        await server.close()

"""Datagram transports for the protocol core: real UDP (asyncio) and an in-memory network (simulation).

Both refuse to send to anything but a numeric unicast address of their own family (see
:func:`~node_agent.dht.endpoints.numeric_address`) and never let a send error escape: under plain asyncio a
malformed host closes the UDP transport for good, under uvloop it raises from ``sendto``. A transport that
is lost anyway reports it through ``on_lost`` so the node stops loudly instead of living on deaf.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from typing import Any, cast

from node_agent.dht.endpoints import ip_version, numeric_address

logger = logging.getLogger(__name__)

Address = tuple[str, int]
DatagramHandler = Callable[[bytes, Address], None]
LostHandler = Callable[[Exception | None], None]
RECEIVE_BUFFER_BYTES = 4 * 1024 * 1024  # bursts of lookups from many peers must not overflow the socket


def _checked_destination(address: object, version: int) -> Address | None:
    """The address to send to, or None (logged) if it is not a numeric unicast address of our family."""
    try:
        # Any object may arrive here; a wrong shape raises TypeError/ValueError, caught below.
        host, port = cast("tuple[object, object]", address)
        return numeric_address(host, port, version, allow_scope=True)
    except (TypeError, ValueError) as exc:
        logger.debug("not sending to %r: %s", address, exc)
        return None


class UDPTransport(asyncio.DatagramProtocol):
    def __init__(self, on_datagram: DatagramHandler, on_lost: LostHandler | None = None) -> None:
        self._on_datagram = on_datagram
        self._on_lost = on_lost
        self._transport: asyncio.DatagramTransport | None = None
        self._closing = False
        self.ip_version = 4
        self.send_errors = 0

    @classmethod
    async def create(
        cls, host: str, port: int, on_datagram: DatagramHandler, on_lost: LostHandler | None = None
    ) -> UDPTransport:
        loop = asyncio.get_running_loop()
        _, protocol = await loop.create_datagram_endpoint(
            lambda: cls(on_datagram, on_lost), local_addr=(host, port)
        )
        sock = protocol._transport.get_extra_info("socket") if protocol._transport else None
        if sock is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER_BYTES)
            except OSError:
                logger.debug("could not raise the UDP receive buffer")
        protocol.ip_version = ip_version(protocol.local_address[0])
        return protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A datagram endpoint's protocol is always handed a DatagramTransport.
        self._transport = cast(asyncio.DatagramTransport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._closing:
            return
        logger.error("the DHT's UDP socket was lost: %r", exc)
        if self._on_lost is not None:
            self._on_lost(exc)

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        try:
            self._on_datagram(data, (str(addr[0]), int(addr[1])))
        except Exception:  # a bug must cost one datagram, never the socket
            logger.exception("error handling a datagram from %r", addr)

    def error_received(self, exc: Exception) -> None:
        logger.debug("UDP error: %s", exc)

    @property
    def local_address(self) -> Address:
        assert self._transport is not None
        host, port = self._transport.get_extra_info("sockname")[:2]
        return str(host), int(port)

    def sendto(self, data: bytes, address: Address) -> bool:
        """Send one datagram; False (logged, counted) if it could not be sent. Never raises."""
        if self._transport is None or self._transport.is_closing():
            return False
        destination = _checked_destination(address, self.ip_version)
        if destination is None:
            self.send_errors += 1
            return False
        try:
            self._transport.sendto(data, destination)
        except Exception as exc:  # uvloop raises what plain asyncio reports to error_received
            self.send_errors += 1
            logger.debug("send to %r failed: %s", destination, exc)
            return False
        return True

    def send_once(self, data: bytes, address: Address) -> bool:
        """Send one datagram from a fresh ephemeral port (a dial-back probe: it must come from an address
        and port the target never sent to, or its NAT's filter would let it through). Never raises."""
        destination = _checked_destination(address, self.ip_version)
        if destination is None or self._transport is None:
            return False
        family = socket.AF_INET6 if self.ip_version == 6 else socket.AF_INET
        try:
            with socket.socket(family, socket.SOCK_DGRAM) as probe:
                probe.setblocking(False)
                probe.bind((self.local_address[0], 0))
                probe.sendto(data, destination)
        except OSError as exc:
            logger.debug("probe to %r failed: %s", destination, exc)
            return False
        return True

    def close(self) -> None:
        self._closing = True
        if self._transport is not None:
            self._transport.close()


class MemoryNetwork:
    """Delivers datagrams between in-process endpoints on the next loop iteration (lossless, no latency).

    Used by ``bench_dht.py --simulate`` to run thousands of real protocol cores in one process. A datagram
    to an address nobody holds is silently lost, exactly as UDP to a vanished peer. An endpoint bound with
    ``filtered=True`` behaves as a host behind a home router (address-and-port-dependent filtering): it only
    receives from addresses it has sent to, so reachability checks and relays can run in the simulator.
    """

    def __init__(self) -> None:
        self._endpoints: dict[Address, MemoryTransport] = {}
        self._next_port = 1
        self.datagrams = 0
        self.filtered_drops = 0

    def bind(
        self, on_datagram: DatagramHandler, host: str = "127.0.0.1", port: int = 0, filtered: bool = False
    ) -> MemoryTransport:
        if port == 0:
            while (host, self._next_port) in self._endpoints:
                self._next_port += 1
            port = self._next_port
        address = (host, port)
        if address in self._endpoints:
            raise OSError(f"address {address} already bound")
        transport = MemoryTransport(self, address, on_datagram)
        transport.filtered = filtered
        self._endpoints[address] = transport
        return transport

    def unbind(self, address: Address) -> None:
        self._endpoints.pop(address, None)

    def deliver(self, data: bytes, source: Address, destination: Address) -> None:
        endpoint = self._endpoints.get(destination)
        if endpoint is not None and (not endpoint.filtered or source in endpoint.contacted):
            endpoint.on_datagram(data, source)
        elif endpoint is not None:
            self.filtered_drops += 1


class MemoryTransport:
    def __init__(self, network: MemoryNetwork, address: Address, on_datagram: DatagramHandler) -> None:
        self.network = network
        self.local_address = address
        self.on_datagram = on_datagram
        self.ip_version = ip_version(address[0])
        self.send_errors = 0
        self.filtered = False
        self.contacted: set[Address] = set()  # where a filtered endpoint has sent (its NAT's mappings)
        self._loop = asyncio.get_running_loop()

    def sendto(self, data: bytes, address: Address) -> bool:
        destination = _checked_destination(address, self.ip_version)
        if destination is None:
            self.send_errors += 1
            return False
        self.network.datagrams += 1
        if self.filtered:
            self.contacted.add(destination)
        self._loop.call_soon(self.network.deliver, data, self.local_address, destination)
        return True

    def send_once(self, data: bytes, address: Address) -> bool:
        """``UDPTransport.send_once``: from a port nobody holds, so nothing answers."""
        destination = _checked_destination(address, self.ip_version)
        if destination is None:
            return False
        source = (self.local_address[0], 0)  # port 0: an address no endpoint can have sent to
        self.network.datagrams += 1
        self._loop.call_soon(self.network.deliver, data, source, destination)
        return True

    def close(self) -> None:
        self.network.unbind(self.local_address)

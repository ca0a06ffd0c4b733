"""Datagram transports for the protocol core: real UDP (asyncio) and an in-memory network (simulation)."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable

logger = logging.getLogger(__name__)

Address = tuple[str, int]
DatagramHandler = Callable[[bytes, Address], None]
RECEIVE_BUFFER_BYTES = 4 * 1024 * 1024  # bursts of lookups from many peers must not overflow the socket


class UDPTransport(asyncio.DatagramProtocol):
    def __init__(self, on_datagram: DatagramHandler) -> None:
        self._on_datagram = on_datagram
        self._transport: asyncio.DatagramTransport | None = None

    @classmethod
    async def create(cls, host: str, port: int, on_datagram: DatagramHandler) -> UDPTransport:
        loop = asyncio.get_running_loop()
        _, protocol = await loop.create_datagram_endpoint(lambda: cls(on_datagram), local_addr=(host, port))
        sock = protocol._transport.get_extra_info("socket") if protocol._transport else None
        if sock is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER_BYTES)
            except OSError:
                logger.debug("could not raise the UDP receive buffer")
        return protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple) -> None:  # type: ignore[override]
        self._on_datagram(data, (str(addr[0]), int(addr[1])))

    def error_received(self, exc: Exception) -> None:
        logger.debug("UDP error: %s", exc)

    @property
    def local_address(self) -> Address:
        assert self._transport is not None
        host, port = self._transport.get_extra_info("sockname")[:2]
        return str(host), int(port)

    def sendto(self, data: bytes, address: Address) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.sendto(data, address)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


class MemoryNetwork:
    """Delivers datagrams between in-process endpoints on the next loop iteration (lossless, no latency).

    Used by ``bench_dht.py --simulate`` to run thousands of real protocol cores in one process. A datagram
    to an address nobody holds is silently lost, exactly as UDP to a vanished peer.
    """

    def __init__(self) -> None:
        self._endpoints: dict[Address, MemoryTransport] = {}
        self._next_port = 1
        self.datagrams = 0

    def bind(self, on_datagram: DatagramHandler, host: str = "127.0.0.1", port: int = 0) -> MemoryTransport:
        if port == 0:
            while (host, self._next_port) in self._endpoints:
                self._next_port += 1
            port = self._next_port
        address = (host, port)
        if address in self._endpoints:
            raise OSError(f"address {address} already bound")
        transport = MemoryTransport(self, address, on_datagram)
        self._endpoints[address] = transport
        return transport

    def unbind(self, address: Address) -> None:
        self._endpoints.pop(address, None)

    def deliver(self, data: bytes, source: Address, destination: Address) -> None:
        endpoint = self._endpoints.get(destination)
        if endpoint is not None:
            endpoint.on_datagram(data, source)


class MemoryTransport:
    def __init__(self, network: MemoryNetwork, address: Address, on_datagram: DatagramHandler) -> None:
        self.network = network
        self.local_address = address
        self.on_datagram = on_datagram
        self._loop = asyncio.get_running_loop()

    def sendto(self, data: bytes, address: Address) -> None:
        self.network.datagrams += 1
        self._loop.call_soon(self.network.deliver, data, self.local_address, address)

    def close(self) -> None:
        self.network.unbind(self.local_address)

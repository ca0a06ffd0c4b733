"""Parsing and formatting of ``host:port[/nodeidhex]`` endpoint strings (no I/O except explicit resolve)."""

from __future__ import annotations

import asyncio
import ipaddress
import socket

from node_agent.dht.api import ID_BYTES

Address = tuple[str, int]


def format_endpoint(address: Address) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_endpoint(text: str) -> tuple[str, int, bytes | None]:
    """Split ``"host:port"``, ``"[v6]:port"`` or either with ``"/<40 hex>"`` into (host, port, node id)."""
    if not isinstance(text, str) or not text:
        raise ValueError("endpoint must be a non-empty 'host:port' string")
    node_id = None
    if "/" in text:
        text, _, id_hex = text.partition("/")
        try:
            node_id = bytes.fromhex(id_hex)
        except ValueError:
            raise ValueError(f"bad node id in endpoint: {id_hex!r}") from None
        if len(node_id) != ID_BYTES:
            raise ValueError(f"node id must be {ID_BYTES * 2} hex characters")
    if text.startswith("["):
        host, sep, port_text = text[1:].partition("]:")
    else:
        host, sep, port_text = text.rpartition(":")
    if not sep or not host or not port_text.isdigit() or not 0 <= int(port_text) < 65536:
        raise ValueError(f"endpoint {text!r} is not 'host:port'")
    return host, int(port_text), node_id


async def resolve(host: str, port: int) -> Address:
    """A numeric address for ``host`` (names are resolved once, with the event loop's resolver)."""
    try:
        ipaddress.ip_address(host)
        return host, port
    except ValueError:
        pass
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    if not infos:
        raise ValueError(f"cannot resolve {host!r}")
    sockaddr = infos[0][4]
    return str(sockaddr[0]), int(sockaddr[1])


def outward_ip() -> str:
    """The local address of the default route, for advertising a wildcard-bound node (sends nothing)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("10.255.255.255", 1))  # UDP connect only picks a route; no packet leaves
            return str(probe.getsockname()[0])
        except OSError:
            return "127.0.0.1"

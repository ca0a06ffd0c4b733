"""Parsing and formatting of ``host:port[/nodeidhex]`` endpoint strings and checks on network addresses.

No I/O except the explicit :func:`resolve`. Addresses named by peers (contacts in answers) are only ever used
after :func:`numeric_address` accepted them: a host name would make the event loop resolve it (blocking under
plain asyncio) and a malformed one makes asyncio's UDP transport close itself with a fatal error.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import socket

from node_agent.dht.api import ID_BYTES

Address = tuple[str, int]
RESOLVE_TIMEOUT = 5.0
_MAX_HOST_CHARS = 64  # the longest IPv6 literal is 45 characters
#: Relays an unreachable node names (in expert announcements, averaging declarations, rosters...): each
#: ``host:port/<relay id hex>``, the endpoint part at most 64 characters.
MAX_RELAYS = 3
MAX_RELAY_LENGTH = 64 + 1 + 2 * ID_BYTES


def ip_version(host: str) -> int:
    """4 or 6 for the family of a local socket's numeric address."""
    return 6 if ":" in host else 4


def numeric_address(host: object, port: object, version: int, allow_scope: bool = False) -> Address:
    """``(host, port)`` in canonical form if ``host`` is a unicast IP literal of ``version``; else ValueError.

    Ports must be 1..65535. Scoped IPv6 (``fe80::1%eth0``) is refused unless ``allow_scope`` (the kernel's own
    source addresses carry one; in a peer's answer the interface name would be the peer's, not ours).
    """
    if type(port) is not int or not 0 < port < 65536:
        raise ValueError(f"port {port!r} is not in 1..65535")
    if not isinstance(host, str) or not host or len(host) > _MAX_HOST_CHARS:
        raise ValueError("host is not a numeric IP address")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"host {host!r} is not a numeric IP address") from None
    if ip.version != version:
        raise ValueError(f"host {host!r} is not an IPv{version} address")
    if (getattr(ip, "scope_id", None) and not allow_scope) or ip.is_unspecified or ip.is_multicast:
        raise ValueError(f"host {host!r} is not a unicast address")
    if isinstance(ip, ipaddress.IPv4Address) and ip == ipaddress.IPv4Address("255.255.255.255"):
        raise ValueError("the broadcast address is not a peer")
    return str(ip), port


def wire_address(raw: object) -> Address:
    """An address as carried on the wire (``[host, port]``, a unicast IP literal of either family); else
    ValueError. Used for addresses peers report (an observed address, a relayed request's source)."""
    if not isinstance(raw, list | tuple) or len(raw) != 2:
        raise ValueError("address must be [host, port]")
    host, port = raw
    version = 6 if isinstance(host, str) and ":" in host else 4
    return numeric_address(host, port, version)


@functools.lru_cache(maxsize=4096)
def source_key(host: str) -> str:
    """Who is accountable for traffic from ``host``: its /24 (IPv4) or /48 (IPv6), loopback per address.

    Penalties and storage quotas are counted per source key, so rotating the source port (or the last
    bits of the address) does not give an attacker a fresh allowance.
    """
    try:
        ip = ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # IPv4 peers of a dual-stack socket are not one /48
    if ip.is_loopback:
        return str(ip)
    bits = 24 if ip.version == 4 else 48
    return str(ipaddress.ip_network(f"{ip}/{bits}", strict=False))


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


def checked_relays(relays: object, owner: bytes) -> tuple[str, ...]:
    """The one rule for a node's relay list, wherever a peer sends one: a list of 1..MAX_RELAYS distinct
    ``host:port/<node id hex>`` naming nodes other than ``owner`` (who signed or sent the list); ValueError
    otherwise. A list names relays only while its owner is unreachable, so an empty one is left out."""
    if not isinstance(relays, list) or not 0 < len(relays) <= MAX_RELAYS:
        raise ValueError(f"relays must be a list of 1 to {MAX_RELAYS} relays")
    seen = set()
    for relay in relays:
        if not isinstance(relay, str) or len(relay) > MAX_RELAY_LENGTH:
            raise ValueError(f"each relay is 'host:port/<node id hex>' of at most {MAX_RELAY_LENGTH}")
        try:
            _host, _port, relay_id = parse_endpoint(relay)
        except ValueError as exc:
            raise ValueError(f"relay: {exc}") from None
        if relay_id is None or relay_id == owner or relay_id in seen:
            raise ValueError("each relay must name a distinct node id other than the owner's")
        seen.add(relay_id)
    return tuple(relays)


async def resolve(host: str, port: int, timeout: float = RESOLVE_TIMEOUT) -> Address:
    """A numeric address for ``host`` (names are resolved once, with the event loop's resolver).

    Raises ValueError for anything that cannot be resolved in ``timeout`` seconds.
    """
    try:
        ipaddress.ip_address(host)
        return host, port
    except ValueError:
        pass
    try:
        async with asyncio.timeout(timeout):
            infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    except (OSError, ValueError, TypeError, TimeoutError) as exc:
        raise ValueError(f"cannot resolve {host!r}: {exc}") from None
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

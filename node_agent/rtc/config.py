"""How peer connections are configured: ICE servers, which host candidates to offer, UDP buffer sizes.

aiortc contacts a public STUN server when `iceServers` is left unset, so we always pass an explicit list
(empty by default: nothing leaves the machine unless the operator configures STUN/TURN).

aioice never offers 127.0.0.1 as a host candidate, so two agents on one machine without another interface,
and every loopback test, could not connect. `RTCOptions.loopback` also offers 127.0.0.1, `host_addresses`
offers exactly the given addresses; both apply to the connections made with these options only
(`new_peer_connection`, `node_agent.rtc.host_candidates`), never to other pools of the process.

aioice asks for a 256 KiB UDP receive buffer; under load the kernel drops datagrams and SCTP stalls for a
1 s retransmission timeout. `udp_receive_buffer` raises what aioice asks for (the kernel caps it at
`net.core.rmem_max`, so this works without root, only less well).

The patches of aiortc's private parts install only on the exactly tested aiortc/aioice/pyOpenSSL versions
(`node_agent.rtc.library_versions`); on any other the first pool refuses to start.

aiortc acknowledges every SCTP packet separately; `coalesce_sacks` makes it send one SACK per burst of
received packets (`node_agent.rtc.sctp_tuning`, RFC 4960 section 6.2), process-wide once any pool asks;
`reassembly_shortcut` skips aiortc's walk of the reassembly list after a chunk that cannot complete a message;
`transmit_shortcut` skips its walk of the whole sent queue for retransmissions after every SACK when no chunk
can be marked (`node_agent.rtc.transmit_shortcut`).

aiortc cuts messages into ~1.2 KB SCTP chunks, one DTLS record and datagram each; `record_probing` lets each
connection probe the largest packet its path carries (up to 16 KiB) and cut chunks to it, towards peers that
announced whole-record reads (`node_agent.rtc.record_probing`, `node_agent.rtc.large_records`); None keeps
aiortc's standard chunks.

Between home routers ICE should take the direct server-reflexive pair, not TURN: relayed candidate pairs
wait `relay_grace` seconds for a direct one to succeed (`node_agent.rtc.direct_first`, process-wide).

What one peer may cost us: `admission` (which offers get a connection), unfinished incoming messages
(`max_partial_bytes` per connection, `max_peer_partial_bytes` per peer, `max_node_partial_bytes` for the
whole node; over a bound the connection is dropped) and `max_serving` calls served at once per connection.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from node_agent.rtc.admission import AdmissionLimits
from node_agent.rtc.host_candidates import LOOPBACK_V4, HostCandidates
from node_agent.rtc.record_probing import ProbeSettings

if TYPE_CHECKING:  # aiortc loads only when a connection is made
    from aiortc import RTCConfiguration, RTCPeerConnection

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class IceServer:
    """A STUN or TURN server, e.g. `IceServer("stun:stun.example.org:3478")`."""

    urls: str
    username: str | None = None
    credential: str | None = None


@dataclass(frozen=True, slots=True)
class RTCOptions:
    ice_servers: tuple[IceServer, ...] = ()
    #: Also offer a 127.0.0.1 host candidate (same-machine swarms, tests); this pool's connections only.
    loopback: bool = False
    #: If set, offer exactly these host addresses instead of every interface's (e.g. ("127.0.0.1",));
    #: this pool's connections only.
    host_addresses: tuple[str, ...] | None = None
    #: Also offer 127.0.0.1 to a peer on this same machine (its signalling address is loopback or ours),
    #: and to no one else: a same-machine trainer reaches a node even where no other interface exists.
    same_machine_loopback: bool = True
    udp_receive_buffer: int = 8 * 1024 * 1024
    #: Largest frame we send; the remote's SCTP max-message-size (aiortc: 256 KiB) is the hard bound.
    chunk_size: int = 64 * 1024
    max_payload: int = 64 * 1024 * 1024
    connect_timeout: float = 10.0
    idle_timeout: float = 120.0
    #: One SCTP SACK per burst of received packets instead of one per packet (process-wide).
    coalesce_sacks: bool = True
    #: No reassembly walk after a received chunk that cannot complete a message (process-wide).
    reassembly_shortcut: bool = True
    #: No walk of the sent queue for retransmissions when no chunk can be marked (process-wide).
    transmit_shortcut: bool = True
    #: Probe the largest SCTP packet each path carries and fill it (towards peers that read whole records);
    #: None: aiortc's standard ~1.2 KB chunks on every path.
    record_probing: ProbeSettings | None = field(default_factory=ProbeSettings)
    #: Seconds relayed (TURN) candidate pairs wait for a direct pair to succeed first; 0: no waiting.
    relay_grace: float = 1.0
    #: Which incoming offers get a peer connection (rates, counts, tiers).
    admission: AdmissionLimits = field(default_factory=AdmissionLimits)
    #: Bytes of unfinished incoming messages: per connection (at least one `max_payload` message), per peer
    #: (all its connections) and for the whole node; over any bound the connection is dropped.
    max_partial_bytes: int = 64 * 1024 * 1024
    max_peer_partial_bytes: int = 96 * 1024 * 1024
    max_node_partial_bytes: int = 256 * 1024 * 1024
    #: Calls served at once on one connection; more are answered `busy`.
    max_serving: int = 128

    @classmethod
    def for_loopback(cls, **overrides: Any) -> RTCOptions:
        """Only 127.0.0.1 host candidates: what tests and single-machine benchmarks use."""
        return cls(loopback=True, host_addresses=(LOOPBACK_V4,), **overrides)

    def host_candidates(self) -> HostCandidates | None:
        """This configuration's host-candidate policy; None leaves aioice's own choice."""
        if not self.loopback and self.host_addresses is None:
            return None
        return HostCandidates(self.loopback, tuple(self.host_addresses) if self.host_addresses else None)


def apply_process_settings(options: RTCOptions) -> None:
    """Install the aiortc patches `options` asks for (process-wide, idempotent) and raise UDP buffers.

    Raises `UntestedLibraryError` when aiortc, aioice or pyOpenSSL is not the tested version."""
    import aioice.turn

    from node_agent.rtc.host_candidates import install_host_candidate_hook
    from node_agent.rtc.library_versions import require_tested_versions

    require_tested_versions()
    install_host_candidate_hook()
    from node_agent.rtc.direct_first import install_direct_first

    install_direct_first(options.relay_grace)
    if options.coalesce_sacks:
        from node_agent.rtc.sctp_tuning import install_sack_coalescing

        install_sack_coalescing()
    if options.reassembly_shortcut:
        from node_agent.rtc.sctp_tuning import install_reassembly_shortcut

        install_reassembly_shortcut()
    if options.transmit_shortcut:
        from node_agent.rtc.transmit_shortcut import install_transmit_shortcut

        install_transmit_shortcut()
    if options.record_probing is not None:
        from node_agent.rtc.large_records import install_large_record_reads

        install_large_record_reads()
    if options.udp_receive_buffer > aioice.turn.UDP_SOCKET_BUFFER_SIZE:
        aioice.turn.UDP_SOCKET_BUFFER_SIZE = options.udp_receive_buffer
    try:
        with open("/proc/sys/net/core/rmem_max") as f:
            rmem_max = int(f.read())
        if rmem_max < options.udp_receive_buffer:
            logger.info(
                "net.core.rmem_max=%d caps UDP receive buffers below %d; raise it for faster channels",
                rmem_max,
                options.udp_receive_buffer,
            )
    except (OSError, ValueError):
        pass


def new_peer_connection(options: RTCOptions) -> RTCPeerConnection:
    """A peer connection with `options`' ICE servers that gathers host candidates with `options`' policy."""
    from node_agent.rtc.host_candidates import host_peer_connection_class

    pc: RTCPeerConnection = host_peer_connection_class()(
        rtc_configuration(options), options.host_candidates()
    )
    return pc


def rtc_configuration(options: RTCOptions) -> RTCConfiguration:
    """An explicit aiortc configuration (never None: None would contact a public STUN server)."""
    from aiortc import RTCConfiguration, RTCIceServer

    servers: Sequence[RTCIceServer] = [
        RTCIceServer(urls=s.urls, username=s.username, credential=s.credential) for s in options.ice_servers
    ]
    return RTCConfiguration(iceServers=list(servers))


def parse_ice_server(text: str) -> IceServer:
    """CLI syntax: `stun:host:port` or `turn:user:password@host:port` (also `turns:`, `?transport=tcp`).

    The password is what follows the *last* colon before the `@`: TURN REST usernames (`expiry:node`, what the
    portal issues) contain a colon, their base64 passwords never do."""
    scheme, _, rest = text.partition(":")
    if scheme not in ("stun", "stuns", "turn", "turns") or not rest:
        raise ValueError(f"bad ICE server {text!r}: expected stun:host:port or turn:user:pass@host:port")
    if "@" in rest and scheme.startswith("turn"):
        creds, _, hostport = rest.rpartition("@")
        user, sep, password = creds.rpartition(":")
        if not sep or not user or not hostport:
            raise ValueError(f"bad ICE server {text!r}: expected turn:user:pass@host:port")
        return IceServer(f"{scheme}:{hostport}", username=user, credential=password)
    if scheme.startswith("turn"):
        raise ValueError(f"TURN server {text!r} needs credentials: turn:user:pass@host:port")
    return IceServer(text)

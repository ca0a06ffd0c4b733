"""Probe the largest SCTP packet a connection's path carries and send DATA chunks that fill it (RFC 8899).

aiortc cuts every message into DATA chunks of ~1.2 KB (one SCTP packet, one DTLS record, one UDP datagram
each), sized for the smallest IPv6 MTU. Almost all of aiortc's cost is per packet, so a path that carries
larger datagrams (a 1,500-byte Ethernet MTU, jumbo frames, loopback's 64 KiB) is used far below what it
could move. Here each sender finds out what its path really carries, in-band, and sizes chunks to it:

* **Probes**: an SCTP packet of the probed size made of a HEARTBEAT (carrying a random nonce) and a PAD
  chunk (RFC 4820) filling it up. Every SCTP stack answers a HEARTBEAT with a HEARTBEAT-ACK echoing the
  nonce and skips an unknown PAD chunk, so the answer is small and nothing else is needed from the peer
  than reading whole DTLS records (`large_records.install_large_record_reads`, which peers announce in
  signalling as `large_records`). Probes leave with DF set (`IP_PMTUDISC_PROBE`: the kernel neither
  fragments them nor caps them by its own path-MTU cache), so a probe larger than some link on the path is
  dropped, as a router or the sending kernel must, instead of arriving in IP fragments. Everything else is
  sent as the kernel's default does for any UDP socket (DF set, local fragmentation once an ICMP message
  lowered its path-MTU cache), as with stock aiortc.
* **Search** (`node_agent.rtc.plpmtu`, pure): from aiortc's base packet up to one whole DTLS record (16 KiB);
  a loopback path ends after the first probe, a 1,500-byte path after a dozen.
* **Sending**: the connection's SCTP transport is switched to a subclass whose chunk-sized methods (aiortc's
  own code, rebound to a per-connection copy of their module's globals) read `USERDATA_MAX_LENGTH` from
  that copy, which the prober sets to the validated size. Chunk size is each sender's own choice in SCTP and
  the receiver reassembles by TSN whatever the sizes, so changing it mid-association is safe.
* **Black holes**: the validated size is confirmed every `confirm_interval`, and at once when the
  retransmission timer fires; `max_probes` lost confirmations drop the size to the base. Chunks already cut
  larger than the new size cannot be cut again (their TSNs are taken), so they are sent with DF cleared,
  and IP fragmentation (the sending kernel's, or an IPv4 router's) carries them: RFC 4960 section 7.3. A new
  search starts `confirm_interval` later (and after each search, `raise_interval` later).

Connections whose socket's DF cannot be changed (TURN-relayed pairs: the relay's socket is not ours; non-Linux
systems) keep standard chunks. These patches touch private aiortc attributes: they install only on the
tested aiortc version (`library_versions`), and `test_aiortc_guards.py` checks that the rebound set still
covers every reader of the chunk size and that heartbeats are still echoed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import struct
import sys
import types
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from node_agent.rtc.plpmtu import Phase, RecordSizeSearch, SearchLimits, user_data_for
from node_agent.rtc.transmit_shortcut import FULL_TRANSMIT

logger = logging.getLogger(__name__)

#: The aiortc methods that read `USERDATA_MAX_LENGTH` (fragmenting, bursts, window growth and reset).
CHUNK_SIZED_METHODS = ("_send", "_transmit", "_receive_sack_chunk", "_t3_expired")
#: Readers that run only before a connection could switch (the initial window): left as they are.
CHUNK_SIZED_BEFORE_SWITCH = ("__init__",)
#: SCTP chunk type of PAD (RFC 4820); its top bits say "skip it, carry on" to a receiver that lacks it.
PAD_CHUNK_TYPE = 0x84
#: HEARTBEAT parameter type "Heartbeat Info" (RFC 9260 section 3.3.5).
HEARTBEAT_INFO = 1
_PROBE_MAGIC = b"colearn-plpmtud:"
_NONCE_BYTES = 8

# Linux socket options (Python does not export them all): (level, option, DF without the kernel's PMTU cap,
# no DF).
_DF_OPTIONS = {
    socket.AF_INET: (socket.IPPROTO_IP, 10, 3, 0),  # IP_MTU_DISCOVER, IP_PMTUDISC_PROBE, IP_PMTUDISC_DONT
    socket.AF_INET6: (socket.IPPROTO_IPV6, 23, 3, 0),  # IPV6_MTU_DISCOVER, ..._PROBE, ..._DONT
}


@dataclass(frozen=True, slots=True)
class ProbeSettings:
    """How each connection searches its record size (`RTCOptions.record_probing`)."""

    limits: SearchLimits = field(default_factory=SearchLimits)
    #: A probe not acknowledged within `rtt_factor` round trips (those of a first base-size probe and SCTP's
    #: smoothed one), at least `probe_timeout` and at most `max_probe_timeout`, counts as lost.
    probe_timeout: float = 0.2
    max_probe_timeout: float = 2.0
    rtt_factor: float = 3.0
    #: How often the size found is confirmed (also at once after a retransmission timeout).
    confirm_interval: float = 30.0
    #: How long after a search a larger size is looked for again (RFC 8899: 600 s); after a black hole, a
    #: new search starts `confirm_interval` later.
    raise_interval: float = 600.0


def path_sockets(peer_connection: Any) -> list[socket.socket] | None:
    """The UDP sockets of the nominated ICE pairs, if their DF setting can be changed; None otherwise."""
    if sys.platform != "linux":
        return None
    try:
        pairs = list(peer_connection.sctp.transport.transport._connection._nominated.values())
    except AttributeError:
        return None
    sockets = []
    for pair in pairs:
        transport = getattr(pair.protocol, "transport", None)  # a TURN relay's has no socket of ours
        sock = transport.get_extra_info("socket") if transport is not None else None
        if sock is None or sock.family not in _DF_OPTIONS:
            return None
        level, option, _probe, _dont = _DF_OPTIONS[sock.family]
        try:
            sock.setsockopt(level, option, sock.getsockopt(level, option))
        except OSError as exc:
            logger.info("cannot change DF on the data path's socket (%s): standard chunks", exc)
            return None
        sockets.append(sock)
    return sockets or None


@contextlib.contextmanager
def sending_with(sockets: list[socket.socket], dont_fragment: bool) -> Iterator[None]:
    """What is sent inside leaves with DF set and no kernel PMTU cap (probes), or with DF cleared (chunks cut
    larger than the path carries now); the sockets' own setting (the kernel's default) is restored after.
    The sends underneath are synchronous, so only those datagrams are concerned."""
    saved = []
    for sock in sockets:
        level, option, probe, dont = _DF_OPTIONS[sock.family]
        saved.append(sock.getsockopt(level, option))
        sock.setsockopt(level, option, probe if dont_fragment else dont)
    try:
        yield
    finally:
        for sock, value in zip(sockets, saved, strict=True):
            level, option, _probe, _dont = _DF_OPTIONS[sock.family]
            with contextlib.suppress(OSError):  # closed meanwhile
                sock.setsockopt(level, option, value)


def probe_packet(sctp: Any, size: int, nonce: bytes) -> bytes:
    """One SCTP packet of exactly `size` bytes: a HEARTBEAT carrying `nonce`, then a PAD chunk."""
    from aiortc.rtcsctptransport import HeartbeatChunk, crc32c

    heartbeat = HeartbeatChunk()
    heartbeat.params = [(HEARTBEAT_INFO, _PROBE_MAGIC + nonce)]
    body = bytes(heartbeat)
    pad = size - 12 - len(body)
    if pad < 4 or pad % 4:
        raise ValueError(f"cannot build a probe of {size} bytes")
    body += struct.pack("!BBH", PAD_CHUNK_TYPE, 0, pad) + bytes(pad - 4)
    header = struct.pack("!HHL", sctp._local_port, sctp._remote_port, sctp._remote_verification_tag)
    checksum = crc32c(header + b"\x00\x00\x00\x00" + body)
    return header + struct.pack("<L", checksum) + body


def probe_nonce(chunk: Any) -> bytes | None:
    """The nonce a HEARTBEAT-ACK echoes if it answers one of our probes."""
    for kind, value in getattr(chunk, "params", ()):
        if kind == HEARTBEAT_INFO and value.startswith(_PROBE_MAGIC):
            return bytes(value[len(_PROBE_MAGIC) :])
    return None


class RecordProber:
    """Runs one connection's search: sends probes, applies the validated size, watches for black holes."""

    def __init__(self, sctp: Any, sockets: list[socket.socket], settings: ProbeSettings) -> None:
        self.sctp = sctp
        self.sockets = sockets
        self.settings = settings
        self.search = RecordSizeSearch(settings.limits)
        self.scope: dict[str, Any] = {}
        self._waiting: dict[bytes, asyncio.Future[None]] = {}
        self._data_loss = asyncio.Event()
        #: Round trip of the first, base-size probe (seconds); until then the longest timeout applies.
        self.rtt = settings.max_probe_timeout / settings.rtt_factor

    @property
    def packet_size(self) -> int:
        return int(self.search.plpmtu)

    def chunk_size(self) -> int:
        return int(self.scope["USERDATA_MAX_LENGTH"])

    def heartbeat_acked(self, chunk: Any) -> bool:
        """Called for every HEARTBEAT-ACK; True when it answered a probe of ours."""
        nonce = probe_nonce(chunk)
        if nonce is None:
            return False
        waiter = self._waiting.pop(nonce, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        return True

    def data_lost(self) -> None:
        """The retransmission timer fired: maybe the path stopped carrying our size."""
        if self.search.plpmtu > self.settings.limits.base:
            self._data_loss.set()

    async def run(self) -> None:
        """Probe until the connection closes (cancel it when the connection is dropped)."""
        loop = asyncio.get_running_loop()
        next_raise = loop.time() + self.settings.raise_interval
        try:
            if not await self._measure_round_trip():
                logger.info("the peer answers no heartbeats: standard chunks")
                return
            while True:
                size = self.search.probe_size()
                if size is not None:
                    before = (self.search.phase, self.search.black_holes)
                    answered = await self._probe(size)
                    self.search.acked(size) if answered else self.search.lost(size)
                    self._apply(size)
                    if before[0] is Phase.SEARCHING and self.search.phase is Phase.COMPLETE:
                        next_raise = loop.time() + self.settings.raise_interval  # from the search's end
                    elif self.search.black_holes > before[1]:  # the path changed: look again soon
                        next_raise = loop.time() + self.settings.confirm_interval
                    continue
                if loop.time() >= next_raise:
                    next_raise = loop.time() + self.settings.raise_interval
                    self.search.search_again()
                    continue
                wait = min(self.settings.confirm_interval, next_raise - loop.time())
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._data_loss.wait(), wait)
                self._data_loss.clear()
                self.search.confirm()
        except ConnectionError:
            return  # the DTLS transport closed

    def probe_timeout(self) -> float:
        """How long a probe may take: a few of SCTP's own smoothed round trips, within bounds. Confirmations
        get the longest: a late answer there would throw a size away, and a slow moment is no black hole."""
        if self.search.phase is Phase.CONFIRMING:
            return self.settings.max_probe_timeout
        srtt = getattr(self.sctp, "_srtt", None)
        rtt = max(self.rtt, srtt if isinstance(srtt, float) else 0.0)
        wait = max(self.settings.probe_timeout, self.settings.rtt_factor * rtt)
        return min(wait, self.settings.max_probe_timeout)

    async def _measure_round_trip(self) -> bool:
        """A base-size probe first (the path carries it): proves the peer answers, and times a round trip."""
        loop = asyncio.get_running_loop()
        size = self.settings.limits.base // 4 * 4
        for _ in range(self.settings.limits.max_probes):
            began = loop.time()
            if await self._probe(size):
                self.rtt = loop.time() - began
                return True
        return False

    async def _probe(self, size: int) -> bool:
        nonce = os.urandom(_NONCE_BYTES)
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting[nonce] = waiter
        try:
            with sending_with(self.sockets, dont_fragment=True):
                await self.sctp.transport._send_data(probe_packet(self.sctp, size, nonce))
            await asyncio.wait_for(waiter, self.probe_timeout())
            return True
        except TimeoutError:
            return False
        finally:
            self._waiting.pop(nonce, None)

    def _apply(self, size: int) -> None:
        chunk = user_data_for(self.search.plpmtu)
        if chunk != self.scope["USERDATA_MAX_LENGTH"]:
            logger.debug("SCTP packets of %d bytes from now on", self.search.plpmtu)
            if chunk < self.scope["USERDATA_MAX_LENGTH"]:
                logger.info(
                    "the path stopped carrying %d-byte packets (black hole): back to %d",
                    size,
                    self.search.plpmtu,
                )
            self.scope["USERDATA_MAX_LENGTH"] = chunk


def start_record_probing(peer_connection: Any, settings: ProbeSettings) -> RecordProber | None:
    """Switch this connection's SCTP transport to probed record sizes; None (unchanged) if not possible.

    Run the returned prober's `run()` as a task and cancel it when the connection goes."""
    import aiortc.rtcsctptransport as sctp_module

    sctp = getattr(peer_connection, "sctp", None)
    base = sctp_module.RTCSctpTransport
    if sctp is None or type(sctp) is not base:
        logger.info("unexpected SCTP transport %s: keeping standard chunks", type(sctp).__name__)
        return None
    sockets = path_sockets(peer_connection)
    if sockets is None:
        return None
    prober = RecordProber(sctp, sockets, settings)
    cls = probed_transport_class(prober)
    if cls is None:
        return None
    sctp.__class__ = cls
    return prober


def sctp_chunk_size(peer_connection: Any) -> int | None:
    """The largest DATA chunk user data this connection sends now (aiortc's 1,160 bytes unless its record size
    was probed larger); None without an aiortc SCTP transport. The network lab checks it fits the path."""
    sctp = getattr(peer_connection, "sctp", None)
    if sctp is None:
        return None
    prober = getattr(type(sctp), "colearn_prober", None)
    if isinstance(prober, RecordProber):
        return prober.chunk_size()
    import aiortc.rtcsctptransport as sctp_module

    size = getattr(sctp_module, "USERDATA_MAX_LENGTH", None)
    return size if isinstance(size, int) else None


def probed_transport_class(prober: RecordProber) -> type | None:
    """aiortc's SCTP transport, its chunk-sized methods reading `prober.scope`, heartbeats and losses
    reported to `prober`, oversized chunks sent with DF cleared."""
    import aiortc.rtcsctptransport as sctp_module

    base = sctp_module.RTCSctpTransport
    if not isinstance(getattr(sctp_module, "USERDATA_MAX_LENGTH", None), int):
        logger.info("aiortc has no USERDATA_MAX_LENGTH: standard chunks")
        return None
    prober.scope.update(vars(sctp_module))
    methods: dict[str, Any] = {}
    for name in CHUNK_SIZED_METHODS:
        function = base.__dict__.get(name)
        if not isinstance(function, types.FunctionType):
            logger.info("aiortc's SCTP transport has no %s(): standard chunks", name)
            return None
        methods[name] = _rebound(function, prober.scope)
    full_transmit = base.__dict__.get(FULL_TRANSMIT)  # aiortc's own, once `transmit_shortcut` replaced it
    if isinstance(full_transmit, types.FunctionType):
        methods[FULL_TRANSMIT] = _rebound(full_transmit, prober.scope)
    data_chunk, heartbeat_ack = sctp_module.DataChunk, sctp_module.HeartbeatAckChunk
    send_chunk, receive_chunk, t3_expired = base._send_chunk, base._receive_chunk, methods["_t3_expired"]

    async def _send_chunk(self: Any, chunk: Any) -> None:
        if type(chunk) is data_chunk and len(chunk.user_data) > prober.scope["USERDATA_MAX_LENGTH"]:
            with sending_with(prober.sockets, dont_fragment=False):  # cut before the size fell: IP fragments
                await send_chunk(self, chunk)
        else:
            await send_chunk(self, chunk)

    async def _receive_chunk(self: Any, chunk: Any) -> None:
        if type(chunk) is heartbeat_ack and prober.heartbeat_acked(chunk):
            return
        await receive_chunk(self, chunk)

    def _t3_expired_reported(self: Any) -> None:
        t3_expired(self)
        prober.data_lost()

    methods.update(
        _send_chunk=_send_chunk,
        _receive_chunk=_receive_chunk,
        _t3_expired=_t3_expired_reported,
        colearn_prober=prober,
    )
    return type("ProbedSctpTransport", (base,), methods)


def _rebound(function: types.FunctionType, scope: dict[str, Any]) -> types.FunctionType:
    """The same code object with other globals (so it reads the connection's chunk size)."""
    rebound = types.FunctionType(
        function.__code__, scope, function.__name__, function.__defaults__, function.__closure__
    )
    rebound.__kwdefaults__ = function.__kwdefaults__
    rebound.__qualname__ = function.__qualname__
    rebound.__annotations__ = function.__annotations__
    rebound.__doc__, rebound.__module__ = function.__doc__, function.__module__
    return rebound

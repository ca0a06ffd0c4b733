"""Large SCTP chunks on loopback paths: one DTLS record and one UDP datagram per 16 KB instead of per 1.2 KB.

aiortc cuts every data-channel message into SCTP DATA chunks of at most ~1,150 bytes so that a packet fits
the smallest IPv6 MTU after DTLS and UDP overhead, the right choice on the Internet. On loopback the MTU is
64 KiB, and almost all of aiortc's cost is per packet (pure-Python SCTP bookkeeping, one DTLS record, one
`sendto`, one SACK), so a same-machine connection (tests, benchmarks, a volunteer running several agents, the
local demo swarm) spends most of its CPU cutting and reassembling. Here a connection whose selected ICE pair
is loopback at both ends sends DATA chunks that fill one DTLS record (16 KiB of plaintext) instead. Nothing
changes on other paths.

Two pieces, both needed:

* **Receiving** (`install_large_record_reads`, process-wide): aiortc reads one decrypted record per datagram
  with `recv(1500)` and one outgoing record with `bio_read(1500)`, which would cut a large record short.
  After each DTLS handshake the session is switched to a subclass that reads whole records (up to 16 KiB of
  plaintext; a 1.2 KB record reads as before). A peer announces in signalling that it has this installed.
* **Sending** (`enable_large_chunks`, per connection): the SCTP transport is switched to a subclass whose
  fragmenting and congestion-window methods see a larger `USERDATA_MAX_LENGTH` (aiortc's own methods,
  rebound to a copy of their module's globals), so bursts and window growth scale with the chunk size.
  Used only when the remote announced large-record reads and the path is loopback.

Chunk size is each sender's own choice in SCTP, and the receiver reassembles by TSN whatever the sizes, so
switching mid-association is safe. These touch private aiortc attributes: they install only on the
tested aiortc/pyOpenSSL versions (`library_versions`) and refuse loudly otherwise; `test_aiortc_guards.py`
checks that the patched set still covers every reader of the chunk size and every record read. A connection
whose SCTP transport is not aiortc's keeps standard chunks.
"""

from __future__ import annotations

import ipaddress
import logging
import types
from typing import Any

logger = logging.getLogger(__name__)

#: Largest DTLS plaintext record (RFC 6347: 2^14 bytes).
MAX_RECORD_PLAINTEXT = 16384
#: SCTP common header (12) and DATA chunk header (16) in front of the user data, rounded down to 4 bytes.
LARGE_CHUNK_USER_DATA = (MAX_RECORD_PLAINTEXT - 12 - 16) // 4 * 4
#: Read buffer for one datagram's record; above any DTLS record, so nothing is ever cut short.
_READ_SIZE = 65536
#: The aiortc methods that read `USERDATA_MAX_LENGTH` (fragmenting, bursts, window growth and reset).
CHUNK_SIZED_METHODS = ("_send", "_transmit", "_receive_sack_chunk", "_t3_expired")
#: Readers that run only before a connection could switch (the initial window): left as they are.
CHUNK_SIZED_BEFORE_SWITCH = ("__init__",)

_reads_installed = False
_large_transport_class: type | None = None
#: aiortc's own `RTCDtlsTransport.start`, once the whole-record wrapper replaced it.
original_dtls_start: Any = None


def install_large_record_reads() -> bool:
    """Make every DTLS session of this process read whole records and prepare the large-chunk transport
    (idempotent); UntestedLibraryError on another aiortc/pyOpenSSL."""
    global _reads_installed, original_dtls_start
    if _reads_installed:
        return True
    from aiortc.rtcdtlstransport import RTCDtlsTransport
    from OpenSSL import SSL

    from node_agent.rtc.library_versions import UntestedLibraryError, require_tested_versions

    require_tested_versions()
    if large_chunk_transport_class() is None:
        raise UntestedLibraryError("aiortc's SCTP transport differs: large chunks cannot be installed")
    original_start = getattr(RTCDtlsTransport, "start", None)
    if original_start is None:
        raise UntestedLibraryError("aiortc's DTLS transport has no start() to wrap")

    class WholeRecordConnection(SSL.Connection):
        """An OpenSSL session that always offers room for a whole record when reading."""

        def recv(self, bufsiz: int, flags: int | None = None) -> bytes:
            return super().recv(max(bufsiz, _READ_SIZE), flags)

        def bio_read(self, bufsiz: int) -> bytes:
            return super().bio_read(max(bufsiz, _READ_SIZE))

    async def start(transport: Any, remote_parameters: Any) -> None:
        await original_start(transport, remote_parameters)
        session = getattr(transport, "_ssl", None)
        if type(session) is SSL.Connection:
            session.__class__ = WholeRecordConnection

    # The patch itself: aiortc offers no way to choose the OpenSSL connection class (guard tests pin it).
    RTCDtlsTransport.start = start  # type: ignore[method-assign,assignment]
    original_dtls_start = original_start
    _reads_installed = True
    return True


def large_record_reads_installed() -> bool:
    """What this node announces in signalling: it can receive large-chunk packets."""
    return _reads_installed


def selected_path_is_loopback(peer_connection: Any) -> bool:
    """True when every nominated ICE pair of the data transport runs between loopback addresses."""
    try:
        ice_connection = peer_connection.sctp.transport.transport._connection
        pairs = list(ice_connection._nominated.values())
    except AttributeError:
        return False
    if not pairs:
        return False
    try:
        return all(
            ipaddress.ip_address(pair.local_addr[0]).is_loopback
            and ipaddress.ip_address(pair.remote_addr[0]).is_loopback
            for pair in pairs
        )
    except (AttributeError, ValueError):
        return False


def enable_large_chunks(peer_connection: Any) -> bool:
    """Send large DATA chunks on this connection from now on; False (and unchanged) if not possible."""
    sctp = getattr(peer_connection, "sctp", None)
    cls = large_chunk_transport_class()
    if sctp is None or cls is None:
        return False
    if type(sctp) is cls:
        return True
    if type(sctp) is not cls.__base__:
        logger.info("unexpected SCTP transport %s: keeping standard chunks", type(sctp).__name__)
        return False
    sctp.__class__ = cls
    return True


def large_chunk_transport_class() -> type | None:
    """aiortc's SCTP transport with its chunk-sized methods seeing `LARGE_CHUNK_USER_DATA` (built once)."""
    global _large_transport_class
    if _large_transport_class is not None:
        return _large_transport_class
    import aiortc.rtcsctptransport as sctp_module

    base = sctp_module.RTCSctpTransport
    if not isinstance(getattr(sctp_module, "USERDATA_MAX_LENGTH", None), int):
        logger.info("aiortc has no USERDATA_MAX_LENGTH: large chunks not available")
        return None
    scope = dict(vars(sctp_module), USERDATA_MAX_LENGTH=LARGE_CHUNK_USER_DATA)
    methods: dict[str, Any] = {}
    for name in CHUNK_SIZED_METHODS:
        function = base.__dict__.get(name)
        if not isinstance(function, types.FunctionType):
            logger.info("aiortc's SCTP transport has no %s(): large chunks not available", name)
            return None
        rebound = types.FunctionType(
            function.__code__, scope, function.__name__, function.__defaults__, function.__closure__
        )
        rebound.__kwdefaults__ = function.__kwdefaults__
        rebound.__qualname__ = function.__qualname__
        rebound.__annotations__ = function.__annotations__
        rebound.__doc__, rebound.__module__ = function.__doc__, function.__module__
        methods[name] = rebound
    _large_transport_class = type("LargeChunkSctpTransport", (base,), methods)
    return _large_transport_class


def sctp_chunk_size(peer_connection: Any) -> int | None:
    """The largest DATA chunk user data this connection sends (aiortc's ~1.2 KB unless large chunks are on);
    None without an aiortc SCTP transport. The network lab asserts paths that are not loopback keep 1.2 KB."""
    sctp = getattr(peer_connection, "sctp", None)
    if sctp is None:
        return None
    import aiortc.rtcsctptransport as sctp_module

    if _large_transport_class is not None and type(sctp) is _large_transport_class:
        return LARGE_CHUNK_USER_DATA
    size = getattr(sctp_module, "USERDATA_MAX_LENGTH", None)
    return size if isinstance(size, int) else None

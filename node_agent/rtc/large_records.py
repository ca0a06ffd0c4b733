"""Whole DTLS records on receipt: what lets a peer send us SCTP packets larger than aiortc's 1.2 KB.

aiortc reads one decrypted record per datagram with `recv(1500)` and one outgoing record with
`bio_read(1500)`, which would cut a larger record short. `install_large_record_reads` (process-wide) switches
each DTLS session, after its handshake, to a subclass that reads whole records (up to 16 KiB of plaintext;
a 1.2 KB record reads as before). A peer announces in signalling (`large_records: true`) that it has this
installed; only then does the other side probe larger packets towards it (`node_agent.rtc.record_probing`).

This touches private aiortc/pyOpenSSL attributes: it installs only on the tested versions
(`library_versions`) and refuses loudly otherwise; `test_aiortc_guards.py` checks that the wrapper still
covers every record read.
"""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger(__name__)

#: Read buffer for one datagram's record; above any DTLS record, so nothing is ever cut short.
_READ_SIZE = 65536

_reads_installed = False
#: aiortc's own `RTCDtlsTransport.start`, once the whole-record wrapper replaced it.
original_dtls_start: Any = None


def install_large_record_reads() -> bool:
    """Make every DTLS session of this process read whole records (idempotent); UntestedLibraryError on
    another aiortc/pyOpenSSL."""
    global _reads_installed, original_dtls_start
    if _reads_installed:
        return True
    from aiortc.rtcdtlstransport import RTCDtlsTransport
    from OpenSSL import SSL

    from node_agent.rtc.library_versions import UntestedLibraryError, require_tested_versions

    require_tested_versions()
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

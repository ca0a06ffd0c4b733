"""Fewer SCTP acknowledgements from aiortc: one SACK per burst of received packets, not one per packet.

aiortc 1.16 answers every SCTP packet that carries DATA with its own SACK, so a bulk transfer costs almost as
many packets backwards as forwards, each through DTLS, UDP and SCTP parsing in pure Python on both ends
(profiles of `benchmarks/bench_experts.py` show SACK handling among the top costs). RFC 4960 section 6.2
lets a receiver delay acknowledgements and ack several packets at once. Here the SACK is deferred to the
next turn of the event loop: packets already queued are all processed first (the receive loop does not
yield while datagrams are waiting), then one SACK covers them. No timer is added, so an ack is never late by
more than the burst itself, and retransmission and congestion control see the same cumulative TSN and gap
reports, only coalesced.

This wraps a private aiortc method: it installs only on the tested aiortc version (`library_versions`) and
refuses loudly otherwise; `test_aiortc_guards.py` pins the method's signature and its callers.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

logger = logging.getLogger(__name__)

#: aiortc's own `_send_sack`, once the coalescing wrapper replaced it.
original_send_sack: Any = None


def install_sack_coalescing() -> bool:
    """Patch aiortc's SCTP transport (process-wide, idempotent); UntestedLibraryError on another aiortc."""
    global original_send_sack
    if original_send_sack is not None:
        return True
    from aiortc.rtcsctptransport import RTCSctpTransport

    from node_agent.rtc.library_versions import UntestedLibraryError, require_tested_versions

    require_tested_versions()
    send_now = getattr(RTCSctpTransport, "_send_sack", None)
    if send_now is None or not asyncio.iscoroutinefunction(send_now):
        raise UntestedLibraryError("aiortc's RTCSctpTransport has no _send_sack coroutine to coalesce")

    async def flush(transport: Any) -> None:
        transport._colearn_sack_scheduled = False
        if getattr(transport, "_sack_needed", False):
            try:
                await send_now(transport)
            except Exception as exc:  # the association may have closed meanwhile
                logger.debug("deferred SACK not sent: %r", exc)

    def schedule(transport: Any) -> None:
        task = asyncio.ensure_future(flush(transport))
        transport._colearn_sack_task = task  # keep a reference until it ran

    async def send_sack_coalesced(transport: Any) -> None:
        if getattr(transport, "_colearn_sack_scheduled", False):
            return
        transport._colearn_sack_scheduled = True
        asyncio.get_running_loop().call_soon(schedule, transport)

    # The patch itself: aiortc has no hook for when SACKs are sent (the guard tests pin its signature).
    RTCSctpTransport._send_sack = send_sack_coalesced  # type: ignore[method-assign,assignment]
    original_send_sack = send_now
    return True

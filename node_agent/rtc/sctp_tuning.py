"""Less per-packet work in aiortc's SCTP: one SACK per burst of packets, no reassembly scan per fragment.

**SACKs.** aiortc 1.16 answers every SCTP packet that carries DATA with its own SACK, so a bulk transfer
costs almost as many packets backwards as forwards, each through DTLS, UDP and SCTP parsing in pure Python
on both ends (profiles of `benchmarks/bench_experts.py` show SACK handling among the top costs). RFC 4960
section 6.2 lets a receiver delay acknowledgements and ack several packets at once. Here the SACK is
deferred to the next turn of the event loop: packets already queued are all processed first (the receive
loop does not yield while datagrams are waiting), then one SACK covers them. No timer is added, so an ack is
never late by more than the burst itself, and retransmission and congestion control see the same cumulative
TSN and gap reports, only coalesced.

**Reassembly.** For every DATA chunk received, aiortc adds it to its stream's reassembly list and then walks
that list from the start looking for complete messages. A 64 KiB message is ~57 standard chunks, so its
receipt costs ~1,600 list steps, quadratic in the message's size (profiles of the raw channel with standard
chunks: ~450,000 `tsn_plus_one` calls per 16 MiB). A chunk appended after every chunk held, and not the last
fragment of its message, cannot complete any message (fragments of a message have consecutive TSNs, the
last one highest), nor unblock an ordered one (only a completed earlier message does), so the walk after it
is skipped (`install_reassembly_shortcut`); any other chunk, and every walk not right after an add (FORWARD
TSN), walks as before.

These wrap private aiortc methods: they install only on the tested aiortc version (`library_versions`) and
refuse loudly otherwise; `test_aiortc_guards.py` pins the methods' signatures and their callers.
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


#: aiortc's own `InboundStream.add_chunk` and `pop_messages`, once the shortcut wrapped them.
original_add_chunk: Any = None
original_pop_messages: Any = None


def install_reassembly_shortcut() -> bool:
    """Skip aiortc's reassembly walk after a chunk that cannot complete a message (process-wide,
    idempotent); UntestedLibraryError on another aiortc."""
    global original_add_chunk, original_pop_messages
    if original_add_chunk is not None:
        return True
    from aiortc.rtcsctptransport import SCTP_DATA_LAST_FRAG, InboundStream
    from aiortc.utils import uint32_gt

    from node_agent.rtc.library_versions import UntestedLibraryError, require_tested_versions

    require_tested_versions()
    add, pop = getattr(InboundStream, "add_chunk", None), getattr(InboundStream, "pop_messages", None)
    if add is None or pop is None:
        raise UntestedLibraryError("aiortc's InboundStream has no add_chunk/pop_messages to wrap")

    def add_chunk(stream: Any, chunk: Any) -> None:
        held = stream.reassembly
        appended = not held or uint32_gt(chunk.tsn, held[-1].tsn)
        add(stream, chunk)
        if appended and not chunk.flags & SCTP_DATA_LAST_FRAG:
            # nothing can be complete now that was not before: the list as it is now needs no walk
            stream._colearn_no_walk = (stream.reassembly, len(stream.reassembly))
        else:
            stream._colearn_no_walk = None

    def pop_messages(stream: Any) -> Any:
        marker = getattr(stream, "_colearn_no_walk", None)
        stream._colearn_no_walk = None  # good for the walk right after the add only
        if marker is not None and marker[0] is stream.reassembly and marker[1] == len(stream.reassembly):
            return iter(())
        return pop(stream)

    # The patch itself: aiortc has no other way to skip the walk (the guard tests pin both methods).
    InboundStream.add_chunk = add_chunk  # type: ignore[method-assign,assignment]
    InboundStream.pop_messages = pop_messages  # type: ignore[method-assign,assignment]
    original_add_chunk, original_pop_messages = add, pop
    return True

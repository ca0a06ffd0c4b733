"""aiortc's `_transmit` without its walk of every outstanding chunk when no chunk can be marked, and with a
burst that refills what SACKs acknowledged.

aiortc's `RTCSctpTransport._transmit` runs after every SACK (and every message sent) and first walks the
whole sent queue looking for chunks marked for retransmission. The sent queue holds the congestion window:
~900 standard chunks once a 1 MiB window is open (loopback, or any path with a large bandwidth-delay
product), so every SACK costs ~900 steps of pure Python that find nothing on a path without loss. Profiles of
`benchmarks/bench_experts.py`'s raw channel with standard chunks put that walk first among aiortc's own costs.

aiortc marks chunks in two places only (the guard tests pin it): a SACK with gap blocks strikes missing
chunks (fast retransmit, RFC 9260 section 7.2.4), and the T3 timer's expiry marks every outstanding chunk
(section 6.3.3). So a transport needs the walk only
* after a SACK with gap blocks arrived (the wrapped `_receive_chunk` raises `_colearn_scan` before aiortc
  handles it),
* while T3 is not running although chunks are outstanding (it expired: aiortc restarts it only when it sends),
* while a FORWARD TSN is to be sent (aiortc's own code sends it first);
then aiortc's own `_transmit` runs, and `_colearn_scan` stays raised only while some chunk is still marked
(the window may have stopped the retransmissions half way). Otherwise the replacement sends new data as
aiortc's second half does: the same window, counters and T3 start, and the same burst limit plus the refill.

**Refill.** aiortc limits each `_transmit` to 4 packets beyond the flight (RFC 9260 section 6.1 D, Max.Burst)
and grows the window only while the flight fills it (section 7.2.1). With one SACK per burst of received
packets (`sctp_tuning`'s coalescing, and any receiver that gets packets in batches) a SACK acknowledges 4
packets or more, the sender sends 4 for it, and the flight stays at 4 packets for good: the window never
opens, and a path with a round trip of 20 ms carries ~230 KB/s (loopback under uvloop: a window stuck at 9
packets). A coalesced SACK stands for the per-packet SACKs it replaces, each of which would have released one
packet plus the burst. So the burst also re-sends what the SACKs since the last send took out of the flight
(`_colearn_refill`, on by default): the flight follows the acknowledgements and grows by the burst per SACK
until the window is full, as with per-packet SACKs; the window itself, slow start, congestion avoidance and
loss recovery (aiortc's own walk) are unchanged. A delay of 10 ms each way on loopback: 0.22 -> ~1.7 MB/s.

The replacement is compiled into aiortc's module namespace (it reads `USERDATA_MAX_LENGTH` and `time` where
aiortc's `_transmit` does), so `record_probing` can rebind it to a connection's chunk size like aiortc's own
methods; aiortc's `_transmit` stays reachable as `_colearn_full_transmit`, which `record_probing` rebinds
too. Installs only on the tested aiortc version (`library_versions`).
"""

from __future__ import annotations

import types
from collections.abc import Callable
from typing import Any

#: aiortc's own `_transmit` and `_receive_chunk`, once the shortcut replaced them.
original_transmit: Any = None
original_receive_chunk: Any = None
#: Where aiortc's own `_transmit` stays reachable on the transport (rebound by `record_probing` too).
FULL_TRANSMIT = "_colearn_full_transmit"
#: The names the replacement reads from aiortc's module namespace (the guard tests check they are there).
AIORTC_GLOBALS = ("USERDATA_MAX_LENGTH", "time")


async def _transmit(self: Any) -> None:  # pragma: no cover - its code runs rebound to aiortc's namespace
    """aiortc's `_transmit` without the walk for retransmissions when none can be marked."""
    t3_expired = self._t3_handle is None and self._sent_queue
    if self._colearn_scan or self._forward_tsn_chunk is not None or t3_expired:
        await self._colearn_full_transmit()
        self._colearn_scan = any(chunk._retransmit for chunk in self._sent_queue)
        self._colearn_flight_sent = self._flight_size
        return

    # aiortc's own code from here on (rtcsctptransport.py, `_transmit` after the retransmissions)
    if self._fast_recovery_exit is not None:  # noqa: SIM108 - aiortc's statement as it is (guard tests)
        burst_size = 2 * USERDATA_MAX_LENGTH  # type: ignore[name-defined]  # noqa: F821
    else:
        burst_size = 4 * USERDATA_MAX_LENGTH  # type: ignore[name-defined]  # noqa: F821
    if self._colearn_refill:  # what the SACKs since the last send took out of flight may go again
        burst_size += max(0, self._colearn_flight_sent - self._flight_size)
    cwnd = min(self._flight_size + burst_size, self._cwnd)
    while self._outbound_queue and self._flight_size < cwnd:
        chunk = self._outbound_queue.popleft()
        self._sent_queue.append(chunk)
        self._flight_size_increase(chunk)
        chunk._sent_count += 1
        chunk._sent_time = time.time()  # type: ignore[name-defined]  # noqa: F821
        await self._send_chunk(chunk)
        if not self._t3_handle:
            self._t3_start()
    self._colearn_flight_sent = self._flight_size


def in_aiortc_namespace(function: Callable[..., Any], namespace: dict[str, Any]) -> types.FunctionType:
    """`function`'s code with aiortc's module globals (what it reads is aiortc's, as in aiortc's own code)."""
    compiled = types.FunctionType(function.__code__, namespace, "_transmit")
    compiled.__qualname__ = "RTCSctpTransport._transmit"
    compiled.__doc__ = function.__doc__
    return compiled


def install_transmit_shortcut(refill: bool = True) -> bool:
    """Patch aiortc's SCTP transport (process-wide, idempotent); UntestedLibraryError on another aiortc.

    `refill`: a SACK lets the burst re-send what it took out of flight, besides aiortc's burst limit."""
    global original_transmit, original_receive_chunk
    if original_transmit is not None:
        return True
    import aiortc.rtcsctptransport as sctp_module

    from node_agent.rtc.library_versions import UntestedLibraryError, require_tested_versions

    require_tested_versions()
    base = sctp_module.RTCSctpTransport
    transmit, receive = base.__dict__.get("_transmit"), base.__dict__.get("_receive_chunk")
    if not isinstance(transmit, types.FunctionType) or not isinstance(receive, types.FunctionType):
        raise UntestedLibraryError("aiortc's RTCSctpTransport has no _transmit/_receive_chunk to replace")
    namespace = vars(sctp_module)
    missing = [name for name in AIORTC_GLOBALS if name not in namespace]
    if missing:
        raise UntestedLibraryError(f"aiortc's SCTP module lacks {missing}")
    sack_chunk = sctp_module.SackChunk

    async def _receive_chunk(self: Any, chunk: Any) -> None:
        if isinstance(chunk, sack_chunk) and chunk.gaps:
            self._colearn_scan = True  # it may strike chunks: the next _transmit walks them
        await receive(self, chunk)

    # The patch itself: aiortc has no hook for this (the guard tests pin both methods and every marker).
    base._colearn_scan = True  # type: ignore[attr-defined]  # a new transport walks once, then knows
    base._colearn_refill = refill  # type: ignore[attr-defined]
    base._colearn_flight_sent = 0  # type: ignore[attr-defined]
    setattr(base, FULL_TRANSMIT, transmit)
    base._transmit = in_aiortc_namespace(_transmit, namespace)  # type: ignore[method-assign]
    base._receive_chunk = _receive_chunk  # type: ignore[method-assign]
    original_transmit, original_receive_chunk = transmit, receive
    return True

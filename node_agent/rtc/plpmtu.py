"""Packetization-layer path MTU search for SCTP over DTLS (RFC 8899 ideas), pure: no sockets, no clocks.

The unit is the SCTP packet, i.e. the plaintext of one DTLS record, i.e. one UDP datagram on the path. Every
connection starts at `BASE_PACKET`, aiortc's standard packet (1,189 bytes, sized to cross a 1,280-byte IPv6
MTU after DTLS, UDP and IP headers), which any path is assumed to carry. The search then probes larger
packets (a HEARTBEAT padded with a PAD chunk, sent with DF set; `node_agent.rtc.record_probing` does the
I/O) and raises the validated size `plpmtu` to each size the peer acknowledges, up to one whole DTLS record
(`MAX_PACKET`, 16 KiB).

The first probe asks for the maximum (a loopback path carries it, so the search ends at once); after a loss
it is a binary search between the largest acknowledged size and the smallest lost one, to `precision`
bytes. A size counts as lost after `max_probes` unacknowledged probes (one lost probe may be chance).

Black holes: after the search the driver confirms the current size now and then and whenever data loss
suggests the path changed (`confirm`). When a confirmation is lost `max_probes` times, the path no longer
carries `plpmtu`: it falls back to the base at once (`black_holes` counts it) and the driver searches again
later (`search_again`), now from the base up.

Driver protocol: ask `probe_size()`; None means nothing to probe now. Otherwise send one probe of that size
and report exactly one of `acked(size)` or `lost(size)` for it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

#: aiortc's standard SCTP packet (its `SCTP_MAX_PACKET_LENGTH`; the guard tests pin the two together).
BASE_PACKET = 1189
#: One whole DTLS record's plaintext (RFC 6347: 2^14 bytes).
MAX_PACKET = 16384
#: SCTP common header (12) and DATA chunk header (16) in front of a chunk's user data.
DATA_OVERHEAD = 12 + 16
#: Smallest probe: common header, a HEARTBEAT with its info, and a PAD chunk header.
MIN_PROBE = 64


def user_data_for(packet: int) -> int:
    """The DATA chunk payload that fills a packet of `packet` bytes (chunks are padded to 4 bytes)."""
    return (packet - DATA_OVERHEAD) // 4 * 4


class Phase(enum.Enum):
    SEARCHING = "searching"
    COMPLETE = "complete"
    CONFIRMING = "confirming"


@dataclass(frozen=True, slots=True)
class SearchLimits:
    base: int = BASE_PACKET
    maximum: int = MAX_PACKET
    #: Unacknowledged probes of one size before that size counts as lost.
    max_probes: int = 3
    #: The search stops when the largest acknowledged and the smallest lost size are this close.
    precision: int = 16

    def __post_init__(self) -> None:
        if not MIN_PROBE <= self.base <= self.maximum <= MAX_PACKET or self.maximum % 4:
            raise ValueError(f"need {MIN_PROBE} <= base <= maximum <= {MAX_PACKET}, maximum a multiple of 4")
        if self.max_probes < 1 or self.precision < 8:
            raise ValueError("need max_probes >= 1 and precision >= 8")


class RecordSizeSearch:
    """The state of one connection's search: which size is validated, which to probe next."""

    def __init__(self, limits: SearchLimits | None = None) -> None:
        self.limits = limits or SearchLimits()
        #: The largest packet the path is known to carry now (what DATA chunks are sized to).
        self.plpmtu = self.limits.base
        #: The largest size not known to be lost (the search's upper bound).
        self.upper = self.limits.maximum
        self.phase = Phase.SEARCHING
        self.black_holes = 0
        self._attempts = 0
        self._check_done()

    def probe_size(self) -> int | None:
        """The size to probe next, or None while nothing is to be probed."""
        if self.phase is Phase.CONFIRMING:
            return self.plpmtu
        if self.phase is Phase.COMPLETE:
            return None
        if self.upper == self.limits.maximum:  # nothing lost yet: try the largest first
            return self.upper
        return (self.plpmtu + self.upper) // 2 // 4 * 4  # above plpmtu: they are `precision` apart

    def acked(self, size: int) -> None:
        """A probe of `size` came back: the path carries it."""
        self._expect(size)
        self._attempts = 0
        if self.phase is Phase.CONFIRMING:
            self.phase = Phase.COMPLETE
            return
        self.plpmtu = size
        self._check_done()

    def lost(self, size: int) -> None:
        """A probe of `size` was not acknowledged in time."""
        self._expect(size)
        self._attempts += 1
        if self._attempts < self.limits.max_probes:
            return
        self._attempts = 0
        if self.phase is Phase.CONFIRMING:  # the validated size stopped passing: a black hole
            self.black_holes += 1
            self.plpmtu = self.upper = self.limits.base
            self.phase = Phase.COMPLETE
            return
        self.upper = size - 4
        self._check_done()

    def confirm(self) -> None:
        """Check that the path still carries `plpmtu` (periodically, or when data went missing)."""
        if self.phase is Phase.COMPLETE and self.plpmtu > self.limits.base:
            self.phase = Phase.CONFIRMING
            self._attempts = 0

    def search_again(self) -> None:
        """Look for a larger size again (the path may have changed), up to the maximum."""
        if self.phase is Phase.COMPLETE:
            self.upper = self.limits.maximum
            self._attempts = 0
            self.phase = Phase.SEARCHING
            self._check_done()

    def _expect(self, size: int) -> None:
        if size != self.probe_size():
            raise ValueError(f"no probe of {size} bytes is outstanding")

    def _check_done(self) -> None:
        if self.phase is Phase.SEARCHING and self.upper - self.plpmtu < self.limits.precision:
            self.phase = Phase.COMPLETE
            self._attempts = 0

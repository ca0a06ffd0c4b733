"""Trainer-side bookkeeping of which volunteers fail or misbehave, so the trainer stops asking them.

Volunteers vanish, stall or (rarely) return garbage (Learning@home section 3.3). Masking one bad answer keeps
a step correct, but a peer that keeps failing wastes a slot of `k_best` on every step. This tracker counts
failures and anomalies per peer and, once a peer crosses a threshold, avoids it for a time that doubles with
each new ban (capped), like exponential back-off. After a ban the peer is on probation: a single further
failure bans it again, one success clears the probation. Pure bookkeeping: `now` is always passed in.
"""

from __future__ import annotations

import enum
import logging
import threading
from dataclasses import dataclass, field

__all__ = ["FailureKind", "PeerStats", "ReliabilityTracker"]

logger = logging.getLogger(__name__)


class FailureKind(enum.Enum):
    """Why a call to a peer was not usable; anomalies weigh more than plain failures."""

    TIMEOUT = "timeout"
    UNAVAILABLE = "unavailable"
    PROTOCOL = "protocol"  # malformed reply or an error reported by the server
    ANOMALY = (
        "anomaly"  # a well-formed reply with NaN/inf or the wrong shape: likely a broken or hostile peer
    )


_WEIGHTS = {
    FailureKind.TIMEOUT: 1.0,
    FailureKind.UNAVAILABLE: 1.0,
    FailureKind.PROTOCOL: 2.0,
    FailureKind.ANOMALY: 2.0,
}


@dataclass(slots=True)
class PeerStats:
    """Counters for one peer (keyed by node id); `avoid_until` is on the tracker's `now` clock."""

    successes: int = 0
    failures: dict[FailureKind, int] = field(default_factory=lambda: dict.fromkeys(FailureKind, 0))
    strikes: float = 0.0  # weighted failures since the last success
    bans: int = 0
    avoid_until: float = 0.0
    on_probation: bool = False

    @property
    def total_failures(self) -> int:
        return sum(self.failures.values())


class ReliabilityTracker:
    """Per-peer failure counters with growing avoidance; thread-safe (the layer and the search share it).

    * `threshold`: weighted strikes that trigger a ban (a timeout counts 1, an anomaly 2).
    * `base_ban`: first ban length in seconds; each further ban doubles it, up to `max_ban`.
    """

    def __init__(self, threshold: float = 3.0, base_ban: float = 5.0, max_ban: float = 600.0):
        if threshold <= 0 or base_ban <= 0 or max_ban < base_ban:
            raise ValueError("need threshold > 0 and 0 < base_ban <= max_ban")
        self.threshold = threshold
        self.base_ban = base_ban
        self.max_ban = max_ban
        self._peers: dict[bytes, PeerStats] = {}
        self._lock = threading.Lock()

    def _stats(self, peer: bytes) -> PeerStats:
        stats = self._peers.get(peer)
        if stats is None:
            stats = self._peers[peer] = PeerStats()
        return stats

    def record_success(self, peer: bytes, now: float) -> None:
        with self._lock:
            stats = self._stats(peer)
            stats.successes += 1
            stats.strikes = 0.0
            stats.on_probation = False

    def record_failure(self, peer: bytes, kind: FailureKind, now: float) -> bool:
        """Count one failure; return True if this failure started a ban."""
        with self._lock:
            stats = self._stats(peer)
            stats.failures[kind] += 1
            stats.strikes += _WEIGHTS[kind]
            if now < stats.avoid_until:
                return False  # already banned (a late reply from before the ban)
            if stats.strikes < self.threshold and not stats.on_probation:
                return False
            duration = min(self.max_ban, self.base_ban * 2.0**stats.bans)
            stats.bans += 1
            stats.avoid_until = now + duration
            stats.strikes = 0.0
            stats.on_probation = True
        logger.warning(
            "avoiding peer %s for %.0f s after repeated failures (last: %s, ban #%d)",
            peer.hex()[:16],
            duration,
            kind.value,
            stats.bans,
        )
        return True

    def is_avoided(self, peer: bytes, now: float) -> bool:
        with self._lock:
            stats = self._peers.get(peer)
            return stats is not None and now < stats.avoid_until

    def stats(self, peer: bytes) -> PeerStats:
        """A copy of the counters of one peer (zeros for an unknown peer)."""
        with self._lock:
            stats = self._peers.get(peer) or PeerStats()
            return PeerStats(
                successes=stats.successes,
                failures=dict(stats.failures),
                strikes=stats.strikes,
                bans=stats.bans,
                avoid_until=stats.avoid_until,
                on_probation=stats.on_probation,
            )

    def avoided_peers(self, now: float) -> set[bytes]:
        with self._lock:
            return {peer for peer, stats in self._peers.items() if now < stats.avoid_until}

    def summary(self, now: float) -> dict[str, int]:
        """Totals for the metrics stream: peers known, peers avoided now, failures and anomalies seen."""
        with self._lock:
            return {
                "peers": len(self._peers),
                "avoided": sum(1 for stats in self._peers.values() if now < stats.avoid_until),
                "failures": sum(stats.total_failures for stats in self._peers.values()),
                "anomalies": sum(stats.failures[FailureKind.ANOMALY] for stats in self._peers.values()),
            }

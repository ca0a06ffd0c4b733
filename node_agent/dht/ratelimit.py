"""Per-source token buckets for requests that cost signature checks (pure: the caller passes ``now``).

A store of 256 records costs 257 Ed25519 verifications (~130 us each on a slow core), so one source
re-storing a record thousands of times could keep a node from answering anyone. Charging the checks to the
sender's source key (an address prefix, as for bans and storage quotas) *before* doing them bounds what one
source can make a node verify; a dropped request costs only its parse.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable


class CostBuckets:
    """``rate`` tokens per second up to ``burst`` per key; the least recently used beyond ``size`` forgotten
    (a forgotten key restarts full, like a new one: the limit is per source, not a ledger)."""

    def __init__(self, rate: float, burst: float, size: int) -> None:
        self.rate, self.burst, self.size = rate, burst, size
        self._buckets: OrderedDict[Hashable, tuple[float, float]] = OrderedDict()  # key -> (tokens, updated)

    def take(self, key: Hashable, cost: float, now: float) -> bool:
        """Spend ``cost`` tokens of ``key`` if it has them; a refused request spends nothing."""
        tokens, updated = self._buckets.pop(key, (self.burst, now))
        tokens = min(self.burst, tokens + max(0.0, now - updated) * self.rate)
        allowed = tokens >= cost
        if allowed:
            tokens -= cost
        self._buckets[key] = (tokens, now)
        if len(self._buckets) > self.size:
            self._buckets.popitem(last=False)
        return allowed

"""A token bucket per node for telemetry (pure: the caller passes `now` and stores the state).

Each node may send `burst` bodies at once and then one per `interval` seconds; a refusal says how long to
wait (the Retry-After header of the 429).
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class BucketDecision:
    allowed: bool
    tokens: float
    retry_after: float


def take_token(
    tokens: float | None, updated_at: float | None, *, now: float, interval: float, burst: int
) -> BucketDecision:
    """Refill at one token per `interval` up to `burst`, then take one if there is one."""
    if tokens is None or updated_at is None or not math.isfinite(tokens):
        tokens, updated_at = float(burst), now
    elapsed = max(0.0, now - updated_at)
    available = min(float(burst), tokens + elapsed / interval)
    if available >= 1.0:
        return BucketDecision(True, available - 1.0, 0.0)
    return BucketDecision(False, available, (1.0 - available) * interval)

"""Rate limits: a token bucket per node for telemetry (pure: the caller passes `now` and stores the
state), and fixed windows counted in the cache for the other endpoints that take work.

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


@dataclass(frozen=True, slots=True)
class WindowLimit:
    """At most `hits` requests per `window_s` seconds for one key of one scope (settings-driven)."""

    scope: str
    hits: int
    window_s: int


def window_hit(limit: WindowLimit, key: str, *, now: float) -> float | None:
    """Count one request against `limit` for `key`; None if allowed, else seconds until the window ends.

    A fixed window counted in Django's cache (`add` then `incr`, both atomic in every backend). With the
    default local-memory cache each portal process counts on its own, so the limit is per process.
    A limit of 0 hits disables it.
    """
    from django.core.cache import cache

    if limit.hits <= 0:
        return None
    window = int(now // limit.window_s)
    cache_key = f"rl:{limit.scope}:{key}:{window}"
    cache.add(cache_key, 0, timeout=limit.window_s + 1)
    try:
        count = cache.incr(cache_key)
    except ValueError:  # evicted between add and incr: count this request as the first
        cache.set(cache_key, 1, timeout=limit.window_s + 1)
        count = 1
    if count <= limit.hits:
        return None
    return max(1.0, (window + 1) * limit.window_s - now)


#: Window of each rate-limit setting in `settings.SWARM` (the number of hits is the setting's value).
LIMIT_WINDOWS_S = {
    "RATE_AGENT_PER_IP": 60,
    "RATE_JOIN_PER_IP": 300,
    "RATE_JOIN_PER_KEY": 300,
    "RATE_RENEW_PER_KEY": 300,
    "RATE_EXPORT_FETCH_PER_KEY": 3600,
    "RATE_JOIN_CODES_PER_USER": 3600,
}


def enforce(setting: str, key: str, *, now: float) -> None:
    """Count one request for `key` under the limit named `setting`; raise RateLimited if over."""
    from django.conf import settings

    from swarm.errors import RateLimited

    limit = WindowLimit(setting, int(settings.SWARM[setting]), LIMIT_WINDOWS_S[setting])
    retry_after = window_hit(limit, key, now=now)
    if retry_after is not None:
        raise RateLimited(
            "rate_limited",
            f"more than {limit.hits} requests in {limit.window_s} s; retry later",
            retry_after=retry_after,
        )

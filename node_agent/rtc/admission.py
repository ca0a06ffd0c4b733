"""Which incoming `rtc.offer`s get a peer connection (sans-IO: the caller passes `now` and its connections).

A signed offer costs the sender one datagram and a fresh key, but costs us a peer connection: sockets, a
DTLS handshake, SCTP state. So offers are admitted here, before anything is allocated:

* **Tiers.** A peer that presents a valid portal credential for its key is CREDENTIALED; one whose key had a
  working connection with us (it made at least one call) is KNOWN; anyone else is UNKNOWN.
* **Rates** (token buckets): every key, any tier, `key_offer_rate`; UNKNOWN offers also per source address
  and for the whole node, so a flood of fresh keys is refused cheaply and cannot exhaust the others' share.
* **Counts** of inbound connections (set up or still being set up): `max_connections` in all, `max_unknown`
  UNKNOWN ones, `max_per_address` uncredentialed ones from one address, `max_per_key` per key. A newcomer
  over a count may take the place of a connection of a *lower* tier (idle ones first, then the longest
  unused), so a flood of unknown keys can fill only the unknown share and never keeps a known or
  credentialed peer out; a key over its own count replaces its own oldest connection.
"""

from __future__ import annotations

import enum
from collections import OrderedDict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any


class Tier(enum.IntEnum):
    UNKNOWN = 0
    KNOWN = 1
    CREDENTIALED = 2


@dataclass(frozen=True, slots=True)
class AdmissionLimits:
    max_connections: int = 256
    max_unknown: int = 64
    max_per_address: int = 32
    max_per_key: int = 2
    #: Offers per second and burst: from one key (any tier) ...
    key_offer_rate: float = 1.0
    key_offer_burst: float = 4.0
    #: ... from UNKNOWN keys at one address ...
    address_offer_rate: float = 4.0
    address_offer_burst: float = 16.0
    #: ... and from UNKNOWN keys in all.
    unknown_offer_rate: float = 10.0
    unknown_offer_burst: float = 30.0
    #: How many keys (and addresses) the buckets and the known-peer memory remember (LRU).
    memory: int = 4096


class TokenBucket:
    """`rate` tokens per second up to `burst`; starts full."""

    __slots__ = ("burst", "rate", "tokens", "updated")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate, self.burst, self.tokens, self.updated = rate, burst, burst, now

    def take(self, now: float) -> bool:
        self.tokens = min(self.burst, self.tokens + max(0.0, now - self.updated) * self.rate)
        self.updated = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


class _Buckets:
    """One bucket per key, the least recently used forgotten beyond `size` (a forgotten key restarts full,
    which costs nothing: a fresh key does too)."""

    def __init__(self, rate: float, burst: float, size: int) -> None:
        self.rate, self.burst, self.size = rate, burst, size
        self._buckets: OrderedDict[Hashable, TokenBucket] = OrderedDict()

    def take(self, key: Hashable, now: float) -> bool:
        bucket = self._buckets.pop(key, None) or TokenBucket(self.rate, self.burst, now)
        self._buckets[key] = bucket
        if len(self._buckets) > self.size:
            self._buckets.popitem(last=False)
        return bucket.take(now)


@dataclass(frozen=True, slots=True)
class Slot:
    """One inbound connection as admission sees it; `handle` is the pool's own object for it."""

    key: bytes
    host: str
    tier: Tier
    idle: bool
    last_used: float
    handle: Any


@dataclass(frozen=True, slots=True)
class Decision:
    admitted: bool
    reason: str = ""
    #: Handles of connections to close to make room for this one.
    evict: tuple[Any, ...] = ()


class Admission:
    def __init__(self, limits: AdmissionLimits, now: float) -> None:
        self.limits = limits
        self._key_buckets = _Buckets(limits.key_offer_rate, limits.key_offer_burst, limits.memory)
        self._address_buckets = _Buckets(limits.address_offer_rate, limits.address_offer_burst, limits.memory)
        self._unknown_bucket = TokenBucket(limits.unknown_offer_rate, limits.unknown_offer_burst, now)
        self._known: OrderedDict[bytes, None] = OrderedDict()

    def remember(self, key: bytes) -> None:
        """`key` had a working connection (it made a call): later offers from it are KNOWN."""
        self._known.pop(key, None)
        self._known[key] = None
        if len(self._known) > self.limits.memory:
            self._known.popitem(last=False)

    def is_known(self, key: bytes) -> bool:
        return key in self._known

    def decide(self, key: bytes, host: str, tier: Tier, slots: Sequence[Slot], now: float) -> Decision:
        limits = self.limits
        if not self._key_buckets.take(key, now):
            return Decision(False, "offer rate of this key")
        if tier is Tier.UNKNOWN:
            if not self._address_buckets.take(host, now):
                return Decision(False, "offer rate of unknown keys from this address")
            if not self._unknown_bucket.take(now):
                return Decision(False, "offer rate of unknown keys")
        evict: list[Slot] = []
        remaining = list(slots)

        def drop(slot: Slot) -> None:
            evict.append(slot)
            remaining.remove(slot)

        own = sorted((s for s in remaining if s.key == key), key=lambda s: s.last_used)
        for slot in own[: max(0, len(own) - limits.max_per_key + 1)]:
            drop(slot)  # a key only ever displaces itself beyond its own count
        checks: list[tuple[str, int, Any]] = [("connections", limits.max_connections, lambda s: True)]
        if tier is Tier.UNKNOWN:
            checks.append(("unknown connections", limits.max_unknown, lambda s: s.tier is Tier.UNKNOWN))
        if tier is not Tier.CREDENTIALED:
            checks.append(
                (
                    "connections from this address",
                    limits.max_per_address,
                    lambda s: s.host == host and s.tier is not Tier.CREDENTIALED,
                )
            )
        for name, limit, counts in checks:
            while sum(1 for s in remaining if counts(s)) >= limit:
                victims = [s for s in remaining if counts(s) and s.tier < tier]
                if not victims:
                    return Decision(False, f"too many {name} ({limit})")
                drop(min(victims, key=lambda s: (not s.idle, s.tier, s.last_used)))
        return Decision(True, evict=tuple(s.handle for s in evict))

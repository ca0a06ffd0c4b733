"""Forward graphs kept a short while so that backward need not recompute them (forward-activation reuse).

Learning@home's server is stateless towards trainers (Ryabinin & Gusev 2020, section 3.2): backward re-sends
the inputs and the server recomputes the forward, paying two forwards and one backward per batch. Instead the
server may keep the autograd graph of a forward request under a random id it returns with the outputs; a
backward naming that id runs autograd on the kept graph. The cache is bounded three ways (entry count, bytes,
TTL) and evicts the oldest entry first. A miss (evicted, expired, never existed, or another peer's id) is a
`ForwardCacheMiss`; the server answers "unknown_forward" and the client falls back to re-sending the inputs.

Pure bookkeeping: no torch, no clock (callers pass `now`), no locks (the server touches it from its compute
thread only). Graphs made between two optimiser steps share one parameter snapshot (a "generation"), so a
snapshot's bytes are counted once, for as long as any entry still refers to it. Entries may name a `group`
(the server uses the expert uid) so the server can ask how many forwards of an expert still await their
backward (`pending`) and whether a generation's snapshot is still referenced (`holds_generation`).
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any


class ForwardCacheMiss(LookupError):
    """No kept forward under this id for this peer; `reason` is "unknown" or "foreign"."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(slots=True)
class _Entry:
    owner: bytes
    value: Any
    nbytes: int
    generation: Hashable
    expires: float
    group: Hashable


@dataclass(slots=True)
class _Generation:
    refs: int
    nbytes: int


class ForwardCache:
    """Kept forwards by id, each bound to the peer that made it; see the module docstring."""

    def __init__(self, max_entries: int = 256, max_bytes: int = 512 * 2**20, ttl: float = 30.0) -> None:
        if max_entries < 0 or max_bytes < 0 or ttl < 0:
            raise ValueError("forward cache bounds must be >= 0")
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.ttl = ttl
        self._entries: OrderedDict[Hashable, _Entry] = OrderedDict()
        self._generations: dict[Hashable, _Generation] = {}
        self._groups: Counter[Hashable] = Counter()
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self.refused = 0
        self.evicted = 0
        self.expired = 0
        self.rejected = 0

    @property
    def enabled(self) -> bool:
        return self.max_entries > 0 and self.max_bytes > 0 and self.ttl > 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def put(
        self,
        key: Hashable,
        owner: bytes,
        value: Any,
        *,
        nbytes: int,
        generation: Hashable,
        generation_bytes: int,
        now: float,
        group: Hashable = None,
    ) -> bool:
        """Keep `value` (evicting the oldest entries to make room); False if it can never fit."""
        self.expire(now)
        if not self.enabled or key in self._entries or nbytes + generation_bytes > self.max_bytes:
            self.rejected += 1
            return False
        while self._entries and (
            len(self._entries) >= self.max_entries
            or self.bytes + nbytes + self._new_generation_bytes(generation, generation_bytes) > self.max_bytes
        ):
            self._drop(next(iter(self._entries)))
            self.evicted += 1
        self.bytes += nbytes + self._new_generation_bytes(generation, generation_bytes)
        held = self._generations.setdefault(generation, _Generation(0, generation_bytes))
        held.refs += 1
        self._entries[key] = _Entry(owner, value, nbytes, generation, now + self.ttl, group)
        self._groups[group] += 1
        return True

    def pending(self, group: Hashable) -> int:
        """How many entries of `group` are kept (forwards still waiting for their backward)."""
        return self._groups.get(group, 0)

    def holds_generation(self, generation: Hashable) -> bool:
        """Whether any entry still refers to `generation`'s parameter snapshot."""
        return generation in self._generations

    def take(self, key: Hashable, owner: bytes, now: float) -> Any:
        """Remove and return what `owner` kept under `key`; another peer's id is refused, not consumed."""
        self.expire(now)
        entry = self._entries.get(key)
        if entry is None:
            self.misses += 1
            raise ForwardCacheMiss("unknown", "unknown forward id (expired, evicted or never made)")
        if entry.owner != owner:
            self.refused += 1
            raise ForwardCacheMiss("foreign", "forward id belongs to another peer")
        self._drop(key)
        self.hits += 1
        return entry.value

    def discard(self, key: Hashable) -> None:
        """Drop an entry nobody will take any more (not counted as a hit, miss or eviction)."""
        if key in self._entries:
            self._drop(key)

    def expire(self, now: float) -> int:
        """Drop entries past their TTL (oldest first, so we stop at the first live one)."""
        dropped = 0
        while self._entries:
            key, entry = next(iter(self._entries.items()))
            if entry.expires > now:
                break
            self._drop(key)
            dropped += 1
        self.expired += dropped
        return dropped

    def clear(self) -> None:
        for key in list(self._entries):
            self._drop(key)

    def stats(self) -> dict[str, int]:
        return {
            "entries": len(self._entries),
            "bytes": self.bytes,
            "hits": self.hits,
            "misses": self.misses,
            "refused": self.refused,
            "evicted": self.evicted,
            "expired": self.expired,
            "rejected": self.rejected,
        }

    def _new_generation_bytes(self, generation: Hashable, generation_bytes: int) -> int:
        return 0 if generation in self._generations else generation_bytes

    def _drop(self, key: Hashable) -> None:
        entry = self._entries.pop(key)
        self.bytes -= entry.nbytes
        self._groups[entry.group] -= 1
        if not self._groups[entry.group]:
            del self._groups[entry.group]
        held = self._generations[entry.generation]
        held.refs -= 1
        if held.refs == 0:
            del self._generations[entry.generation]
            self.bytes -= held.nbytes

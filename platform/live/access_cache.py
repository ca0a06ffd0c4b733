"""Who may watch a project, remembered for a few seconds so that a crowd of viewers costs the database
(almost) nothing. The rule itself stays in swarm.permissions; this only keeps its answers.

- An anonymous viewer's verdict depends on the project alone, so it is kept per slug (allowed, refused,
  or no such project) and shared by every anonymous viewer: after the first, their handshakes do no
  database work at all.
- A signed-in viewer's verdict is kept per (slug, user) only when it allows: a volunteer approved a
  moment ago must not be turned away by an old refusal (the page does not retry a refusal).
- Entries live `ttl` seconds (5 s). A project saved or deleted in this process drops its entries at once
  (live.apps connects the signals); other portal processes see the change within the TTL. Access is
  checked when a socket connects; a viewer already watching keeps watching either way.
- At most `max_entries` (10,000) are kept; beyond that expired entries go first, then the oldest.

Viewers that ask at the same moment while the cache is cold share one check (single flight), so a
portal restart that reconnects a thousand browsers costs one query, not a thousand.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal

Outcome = Literal["allowed", "forbidden", "not_found"]
CacheKey = tuple[str, int | None]  # (slug, user id; None for anonymous viewers)

DEFAULT_TTL_S = 5.0
DEFAULT_MAX_ENTRIES = 10_000


@dataclass(frozen=True, slots=True)
class Verdict:
    outcome: Outcome
    project_id: int | None = None


@dataclass
class AccessCache:
    ttl: float = DEFAULT_TTL_S
    max_entries: int = DEFAULT_MAX_ENTRIES
    clock: Callable[[], float] = time.monotonic
    _entries: dict[CacheKey, tuple[float, Verdict]] = field(default_factory=dict)
    _inflight: dict[tuple[int, CacheKey], asyncio.Future[Verdict]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)  # signals fire in the database thread
    checks: int = 0  # verdicts computed (not served from the cache): for tests and logs

    def get(self, key: CacheKey) -> Verdict | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            if entry[0] <= self.clock():
                del self._entries[key]
                return None
            return entry[1]

    def put(self, key: CacheKey, verdict: Verdict) -> None:
        if key[1] is not None and verdict.outcome != "allowed":
            return  # see the module docstring: signed-in refusals are never kept
        with self._lock:
            if key not in self._entries and len(self._entries) >= self.max_entries:
                self._evict()
            self._entries[key] = (self.clock() + self.ttl, verdict)

    def _evict(self) -> None:
        now = self.clock()
        for key in [k for k, (expires, _) in self._entries.items() if expires <= now]:
            del self._entries[key]
        while len(self._entries) >= self.max_entries:
            del self._entries[next(iter(self._entries))]  # dicts keep insertion order: the oldest first

    def forget_project(self, *, slug: str, project_id: int | None) -> None:
        """Drop what is known about a project (it was saved or deleted)."""
        with self._lock:
            for key in [
                k for k, (_, v) in self._entries.items() if k[0] == slug or v.project_id == project_id
            ]:
                del self._entries[key]

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    async def verdict(self, key: CacheKey, check: Callable[[], Awaitable[Verdict]]) -> Verdict:
        """The cached verdict for `key`, or the result of `check()` shared with concurrent askers."""
        cached = self.get(key)
        if cached is not None:
            return cached
        flight_key = (id(asyncio.get_running_loop()), key)
        pending = self._inflight.get(flight_key)
        if pending is None:
            pending = asyncio.ensure_future(self._check(key, check))
            self._inflight[flight_key] = pending
            pending.add_done_callback(lambda done: self._landed(flight_key, done))
        # One asker giving up (its own timeout) must not cancel the check the others wait for.
        return await asyncio.shield(pending)

    def _landed(self, flight_key: tuple[int, CacheKey], done: asyncio.Future[Verdict]) -> None:
        self._inflight.pop(flight_key, None)
        if not done.cancelled():
            done.exception()  # mark retrieved: every asker that still waits re-raises it itself

    async def _check(self, key: CacheKey, check: Callable[[], Awaitable[Verdict]]) -> Verdict:
        self.checks += 1
        verdict = await check()
        self.put(key, verdict)
        return verdict


viewer_access = AccessCache()

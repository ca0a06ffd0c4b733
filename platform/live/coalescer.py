"""Folds a stream of swarm diffs into at most one flush per interval. Pure: events and `now` in, diffs out.

However fast heartbeats arrive, a viewer receives at most `1 / min_interval` messages a second. Within a
window, later diffs replace earlier ones for the same thing (a node, an alert, a node's edges, the
coverage, the replicas panel), so a batch carries the latest state once rather than every intermediate
step; only metric points accumulate (capped, newest kept). The order of the result does not matter to
the browser because every diff is idempotent, but it is deterministic (removals first, then insertion
order) for tests.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from live.protocol import Diff

DEFAULT_MIN_INTERVAL = 0.25  # at most 4 messages a second per viewer
DEFAULT_GATHER = 0.03  # after a quiet spell, wait this long for companions of the first change
MAX_POINTS_PER_SERIES = 500


def _key(diff: Diff) -> tuple[str, str]:
    """What a diff is about: later diffs with the same key supersede earlier ones."""
    # Each test reads diff["type"] itself so that the type checker narrows the diff to that kind.
    if diff["type"] == "node.upsert":
        return ("node", diff["node"]["node_id"])
    if diff["type"] == "node.remove":
        return ("node", diff["node_id"])
    if diff["type"] == "edges.changed":
        return ("edges", diff["source"])
    if diff["type"] == "alert.raised":
        return ("alert", diff["alert"]["id"])
    if diff["type"] == "alert.cleared":
        return ("alert", diff["alert_id"])
    if diff["type"] == "coverage.changed":
        return ("coverage", "")
    if diff["type"] == "replicas.changed":
        return ("replicas", "")
    if diff["type"] == "metrics.appended":
        return ("metrics", diff["series"])
    raise ValueError(f"unknown diff type {diff['type']!r}")


@dataclass(frozen=True, slots=True)
class Flush:
    diffs: list[Diff]
    since: float  # `at` of the oldest change folded into this flush (delivery latency is measured from it)


@dataclass
class Coalescer:
    """Pending diffs of one project, keyed by what they are about.

    `push(diff, now)` records a change; `next_flush_at()` says when the owner should call `flush(now)`
    (None while nothing is pending); `flush(now)` returns the merged diffs and starts a new window.
    """

    min_interval: float = DEFAULT_MIN_INTERVAL
    gather: float = DEFAULT_GATHER
    max_points: int = MAX_POINTS_PER_SERIES
    _pending: dict[tuple[str, str], Diff] = field(default_factory=dict)
    _first_pending_at: float | None = None
    _last_flush_at: float | None = None
    _since: float | None = None
    pushed: int = 0
    flushed: int = 0

    def push(self, diff: Diff, now: float) -> None:
        key = _key(diff)
        self.pushed += 1
        if self._first_pending_at is None:
            self._first_pending_at = now
        previous = self._pending.pop(key, None)  # re-insert so the latest change goes last
        if previous is not None and diff["type"] == "metrics.appended":
            # `previous` has the same key as `diff`, so it is a metrics.appended diff as well.
            points = [*previous["points"], *diff["points"]][-self.max_points :]  # type: ignore[typeddict-item]
            diff = {**diff, "points": points, "at": min(previous["at"], diff["at"])}
        elif previous is not None:
            # The merged diff shows the newest state, so it carries the newest change's time; the
            # flush's `since` still reports the oldest change folded into the window.
            # The same kind of diff with a later `at`; mypy cannot rebuild a TypedDict union from `**`.
            diff = {**diff, "at": max(previous["at"], diff["at"])}  # type: ignore[assignment]
        self._since = diff["at"] if self._since is None else min(self._since, diff["at"])
        self._pending[key] = diff

    @property
    def pending(self) -> int:
        return len(self._pending)

    def next_flush_at(self) -> float | None:
        if self._first_pending_at is None:
            return None
        due = self._first_pending_at + self.gather
        if self._last_flush_at is not None:
            due = max(due, self._last_flush_at + self.min_interval)
        return due

    def flush(self, now: float) -> Flush | None:
        """Everything pending, merged (None if nothing changed). Starts the next window at `now`."""
        if not self._pending:
            return None
        diffs = list(self._pending.values())
        diffs.sort(key=lambda d: 0 if d["type"] == "node.remove" else 1)  # stable: insertion order kept
        since = self._since if self._since is not None else now
        self._pending.clear()
        self._first_pending_at = None
        self._since = None
        self._last_flush_at = now
        self.flushed += 1
        return Flush(diffs=diffs, since=since)

"""When the observer probes each announced node (pure: the caller passes `now` and a random source).

A serving node is probed again every `interval` seconds (with +-`jitter`, so that nodes announced together
are not probed together forever); a node that failed waits `interval * 2**(failures-1)`, capped at
`max_backoff`, so a swarm full of unreachable nodes costs a bounded number of attempts. Each round probes
at most `per_round` nodes: never-probed ones first, then the most overdue. Nodes no longer announced are
forgotten, so memory follows the swarm's size.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class ProbeOutcome:
    """The latest probe of one announced node: `state` is a `swarm.models.ProbeState` value, `serving` the
    uids that answered, `reason` why it is not serving, `at` unix time."""

    state: str
    serving: tuple[str, ...]
    reason: str
    at: float


@dataclass
class ProbeSchedule:
    interval: float = 30.0
    max_backoff: float = 600.0
    per_round: int = 64
    jitter: float = 0.2
    _due: dict[str, float] = field(default_factory=dict)
    _failures: dict[str, int] = field(default_factory=dict)

    def due(self, announced: Iterable[str], now: float) -> list[str]:
        """The node ids (hex) to probe this round, at most `per_round`; forgets nodes not announced."""
        current = set(announced)
        for node_id in set(self._due) - current:
            del self._due[node_id]
            self._failures.pop(node_id, None)
        waiting = [(self._due.get(node_id, float("-inf")), node_id) for node_id in current]
        ready = sorted(item for item in waiting if item[0] <= now)
        return [node_id for _, node_id in ready[: self.per_round]]

    def record(self, node_id: str, serving: bool, now: float, rng: random.Random) -> float:
        """Note a probe's outcome; returns when the node is due again."""
        if serving:
            self._failures.pop(node_id, None)
            wait = self.interval
        else:
            failures = self._failures.get(node_id, 0) + 1
            self._failures[node_id] = failures
            wait = min(self.max_backoff, self.interval * 2 ** min(failures - 1, 30))
        wait *= 1.0 + self.jitter * (2.0 * rng.random() - 1.0)
        self._due[node_id] = now + wait
        return self._due[node_id]

    def failures(self, node_id: str) -> int:
        return self._failures.get(node_id, 0)

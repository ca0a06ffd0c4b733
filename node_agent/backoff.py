"""Exponential backoff with jitter, shared by every retry loop of the agent (portal calls, task restarts)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Backoff"]


@dataclass(frozen=True, slots=True)
class Backoff:
    """After ``n`` failures in a row wait ``base * factor**(n-1)``, capped at ``maximum``, scaled by a random
    factor in [0.5, 1) so agents that lost the portal at the same moment do not all come back in the same
    second ("equal jitter")."""

    base: float = 1.0
    factor: float = 2.0
    maximum: float = 300.0

    def delay(self, failures: int, rand: float) -> float:
        exponent = min(max(failures, 1) - 1, 64)
        cap = min(self.maximum, self.base * self.factor**exponent)
        return cap * (0.5 + 0.5 * min(max(rand, 0.0), 1.0))

"""A bounded FIFO between threads: training and serving append telemetry, the reporter takes batches.

``put`` is O(1) and never blocks: when full the oldest entry is dropped and counted, so a portal outage
costs bounded memory and never slows the caller.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterable
from typing import Generic, TypeVar

__all__ = ["Outbox"]

T = TypeVar("T")


class Outbox(Generic[T]):
    """A bounded FIFO shared between threads; ``put`` never blocks (the oldest entry makes room)."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("outbox capacity must be at least 1")
        self.capacity = capacity
        self.dropped = 0
        self._items: deque[T] = deque()
        self._lock = threading.Lock()

    def put(self, item: T) -> None:
        with self._lock:
            if len(self._items) >= self.capacity:
                self._items.popleft()
                self.dropped += 1
            self._items.append(item)

    def take(self, limit: int) -> list[T]:
        with self._lock:
            return [self._items.popleft() for _ in range(min(limit, len(self._items)))]

    def put_back(self, items: Iterable[T]) -> None:
        """Return unsent items to the front (a failed send); newer items win if there is no room."""
        with self._lock:
            for item in reversed(list(items)):
                if len(self._items) >= self.capacity:
                    self.dropped += 1
                    continue
                self._items.appendleft(item)

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

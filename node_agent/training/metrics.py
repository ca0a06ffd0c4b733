"""The trainer's metrics stream: typed events, JSON lines, in-process callbacks.

Format (one JSON object per line, UTF-8)::

    {"kind": "train", "step": 120, "loss": 0.31, "accuracy": 0.91, "samples_per_s": 410.5,
     "experts_answered": 480, "experts_failed": 3, "timestamp": 1718000000.123}

* `kind`: "train" (running averages since the previous train event) or "eval" (held-out set).
* `step`: optimiser steps done; `loss`/`accuracy`: mean over the covered samples.
* `samples_per_s`: training throughput since the previous train event (0 for eval events).
* `experts_answered` / `experts_failed`: expert calls (forward and backward) that answered / failed,
  timed out or were masked as anomalous since the previous event of the same kind.
* `timestamp`: Unix time in seconds.

A sink is any callable taking a `MetricsEvent`; shipping metrics to the portal later is one more sink
(e.g. one that batches `event.to_dict()` and POSTs them from a background thread). A sink that raises is
logged and dropped from the stream, never allowed to stop training.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Literal

__all__ = ["JsonLinesSink", "MetricsEvent", "MetricsSink", "MetricsStream", "TrainingWindow", "bits_per_byte"]

logger = logging.getLogger(__name__)


def bits_per_byte(loss_nats: float) -> float:
    """A byte-level language model's cross-entropy (nats per byte, its events' `loss`) in bits per byte."""
    return loss_nats / math.log(2)


@dataclass(frozen=True, slots=True)
class MetricsEvent:
    kind: Literal["train", "eval"]
    step: int
    loss: float
    accuracy: float
    samples_per_s: float
    experts_answered: int
    experts_failed: int
    timestamp: float

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(", ", ": "))


MetricsSink = Callable[[MetricsEvent], None]


class TrainingWindow:
    """The steps since the last logged `train` event: each logged point averages over its own window, so a
    reader sees recent loss and throughput, not the whole run's (one definition for every trainer)."""

    def __init__(self) -> None:
        self._reset(time.monotonic())

    def _reset(self, now: float) -> None:
        self.loss = self.accuracy = 0.0
        self.steps = self.items = 0
        self.started = now

    def add(self, loss: float, accuracy: float, items: int) -> None:
        """One successful step over `items` samples (or tokens)."""
        self.loss += loss
        self.accuracy += accuracy
        self.steps += 1
        self.items += items

    def close(self, step: int, experts_answered: int, experts_failed: int) -> MetricsEvent:
        """The window's `train` event at `step` (after at least one `add`); starts the next window."""
        now = time.monotonic()
        event = MetricsEvent(
            "train",
            step,
            self.loss / self.steps,
            self.accuracy / self.steps,
            self.items / max(now - self.started, 1e-9),
            experts_answered,
            experts_failed,
            time.time(),
        )
        self._reset(now)
        return event


class MetricsStream:
    """Fans each event out to the subscribed sinks and keeps the full history in memory."""

    def __init__(self, *sinks: MetricsSink):
        self._sinks: list[MetricsSink] = list(sinks)
        self.history: list[MetricsEvent] = []

    def subscribe(self, sink: MetricsSink) -> None:
        self._sinks.append(sink)

    def emit(self, event: MetricsEvent) -> None:
        self.history.append(event)
        for sink in list(self._sinks):
            try:
                sink(event)
            except Exception:
                logger.exception("metrics sink %r failed; removing it from the stream", sink)
                self._sinks.remove(sink)

    def close(self) -> None:
        for sink in self._sinks:
            close = getattr(sink, "close", None)
            if callable(close):
                close()
        self._sinks.clear()


class JsonLinesSink:
    """Writes each event as one JSON line to a file (appending) or a text stream (`-` means stdout)."""

    def __init__(self, target: str | Path | IO[str]):
        self._owned = False
        if isinstance(target, (str, Path)):
            if str(target) == "-":
                self._stream: IO[str] = sys.stdout
            else:
                self._stream = open(target, "a", encoding="utf-8")  # noqa: SIM115 - closed by close()
                self._owned = True
        else:
            self._stream = target

    def __call__(self, event: MetricsEvent) -> None:
        self._stream.write(event.to_json() + "\n")
        self._stream.flush()

    def close(self) -> None:
        if self._owned:
            self._stream.close()

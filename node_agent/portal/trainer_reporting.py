"""A trainer's reporting: its metrics events and heartbeats to the portal, from synchronous training code.

:class:`PortalMetricsSink` is one more ``MetricsStream`` sink (it only appends to the outbox);
:class:`TrainerCounters` keeps the totals the trainer's heartbeat reports; :func:`start_trainer_reporting`
runs the reporter on its own loop thread, so training never waits on the portal.

A language model's points carry `bits_per_byte` (the window's training loss, or the validation loss on
`eval` points, in bits: nats / ln 2); their `accuracy` is the next-byte (top-1) accuracy, an honest value in
[0, 1] that the portal may show beside it; `samples_per_s` and the heartbeat's `samples` count bytes
(tokens), not windows.
"""

from __future__ import annotations

import logging
import math
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from node_agent import __version__
from node_agent.backoff import Backoff
from node_agent.identity import Identity
from node_agent.portal.client import PortalClient
from node_agent.portal.joining import agent_platform
from node_agent.portal.outbox import Outbox
from node_agent.portal.reporter import BackgroundTelemetry
from node_agent.portal.schemas import HeartbeatBody, MetricPoint, PeerActivity
from node_agent.portal.state import AgentState
from node_agent.training.metrics import bits_per_byte

__all__ = [
    "MAX_BITS_PER_BYTE",
    "PortalMetricsSink",
    "TrainerCounters",
    "TrainerReporting",
    "metric_point",
    "new_run_id",
    "reported_bits_per_byte",
    "start_trainer_reporting",
]

logger = logging.getLogger(__name__)


def new_run_id() -> str:
    """A trainer run's id: each start of a trainer is its own run (its own series on the portal's charts)."""
    return secrets.token_hex(8)


#: The largest bits per byte a point carries (the schema's bound; a diverged model's is left out).
MAX_BITS_PER_BYTE = 64.0


def reported_bits_per_byte(loss_nats: float) -> float | None:
    """A language model's loss in bits per byte as a point carries it; None when not finite or in range."""
    bits = bits_per_byte(loss_nats)
    return bits if math.isfinite(bits) and 0.0 <= bits <= MAX_BITS_PER_BYTE else None


def metric_point(event: Any, run: str = "", language_model: bool = False) -> MetricPoint | None:
    """A ``MetricsEvent`` of ``run`` as the portal's metrics body wants it (with bits per byte for a
    language model); None if it holds non-finite numbers."""
    point = MetricPoint(
        run=run,
        kind=event.kind,
        step=int(event.step),
        loss=float(event.loss),
        accuracy=min(1.0, max(0.0, float(event.accuracy))),
        samples_per_s=max(0.0, float(event.samples_per_s)),
        experts_answered=int(event.experts_answered),
        experts_failed=int(event.experts_failed),
        timestamp=float(event.timestamp),
        bits_per_byte=reported_bits_per_byte(float(event.loss)) if language_model else None,
    )
    if not all(math.isfinite(x) for x in (point.loss, point.samples_per_s, point.timestamp)):
        return None
    return point


class TrainerCounters:
    """Totals a trainer's heartbeat reports, updated from its metrics events (any thread)."""

    def __init__(self, batch_size: int) -> None:
        self.batch_size = batch_size  # samples per step (a language model: bytes, batch x sequence length)
        self.started = time.monotonic()
        self.steps = 0
        self.samples_per_s = 0.0
        self.answered = 0
        self.failed = 0
        #: Set once the trainer's ExpertCaller exists: calls per expert server since the last heartbeat.
        self.peer_requests: Callable[[], dict[bytes, int]] | None = None
        #: Set once a collaborative trainer's optimiser exists: (completed, failed) averaging rounds so far.
        self.averaging_rounds: Callable[[], tuple[int, int]] | None = None

    def take_peers(self, limit: int = 256) -> list[PeerActivity]:
        """The busiest expert servers since the last heartbeat, as the heartbeat's `peers` field."""
        counts = self.peer_requests() if self.peer_requests is not None else {}
        busiest = sorted(counts.items(), key=lambda item: item[1], reverse=True)[:limit]
        return [PeerActivity(node_id=node_id.hex(), requests=requests) for node_id, requests in busiest]

    @property
    def samples(self) -> int:
        return self.steps * self.batch_size

    def observe(self, event: Any) -> None:
        self.answered += max(0, int(event.experts_answered))
        self.failed += max(0, int(event.experts_failed))
        if event.kind == "train":
            self.steps = max(self.steps, int(event.step))
            if math.isfinite(event.samples_per_s):
                self.samples_per_s = max(0.0, float(event.samples_per_s))


class PortalMetricsSink:
    """A ``MetricsStream`` sink: queues each event for the portal; never blocks or raises into training."""

    def __init__(
        self,
        outbox: Outbox[MetricPoint],
        counters: TrainerCounters | None = None,
        run: str | None = None,
        language_model: bool = False,
    ) -> None:
        self.outbox = outbox
        self.language_model = language_model
        self.counters = counters
        self.run = run if run is not None else new_run_id()
        self.skipped = 0

    def __call__(self, event: Any) -> None:
        if self.counters is not None:
            self.counters.observe(event)
        point = metric_point(event, self.run, self.language_model)
        if point is None:
            self.skipped += 1
            logger.debug("not reporting step %s: non-finite metrics", getattr(event, "step", "?"))
            return
        self.outbox.put(point)


@dataclass(slots=True)
class TrainerReporting:
    """Subscribe ``sink`` to the trainer's ``MetricsStream``; ``stop()`` after training (short flush)."""

    telemetry: BackgroundTelemetry
    sink: PortalMetricsSink
    counters: TrainerCounters
    state: AgentState

    def stop(self, flush_timeout: float = 3.0) -> None:
        self.telemetry.stop(flush_timeout)

    def report_averaging(self, collaborative: Any) -> None:
        """Heartbeats report a collaborative trainer's averaging rounds (gradients and state) from now on."""
        self.counters.averaging_rounds = collaborative.averaging_rounds


def start_trainer_reporting(
    state: AgentState,
    identity: Identity,
    *,
    batch_size: int,
    language_model: bool = False,
    heartbeat_period: float = 30.0,
    metrics_period: float = 5.0,
    portal_timeout: float = 10.0,
    backoff: Backoff | None = None,
    say: Callable[[str], None] = print,
) -> TrainerReporting:
    """Start a background reporter for a trainer: never blocks the training loop, whatever the portal does.
    `batch_size`: samples per step (bytes for a language model, whose points carry bits per byte)."""
    client = PortalClient(state.portal_url, timeout=portal_timeout)
    counters = TrainerCounters(batch_size)

    def heartbeat(credential: str) -> HeartbeatBody:
        completed, failed = counters.averaging_rounds() if counters.averaging_rounds is not None else (0, 0)
        return HeartbeatBody(
            credential=credential,
            node_id=identity.node_id.hex(),
            endpoint="0.0.0.0:0",  # a trainer is a DHT client: nobody dials it
            agent_version=__version__,
            platform=agent_platform(),
            role="trainer",
            experts=[],
            requests=counters.answered + counters.failed,
            samples=counters.samples,
            failures=counters.failed,
            bytes_in=0,
            bytes_out=0,
            samples_per_s=round(counters.samples_per_s, 3),
            uptime_s=round(time.monotonic() - counters.started, 1),
            peers=counters.take_peers(),
            averaging_rounds_completed=completed,
            averaging_rounds_failed=failed,
        )

    telemetry = BackgroundTelemetry(
        client=client,
        identity=identity,
        credential=lambda: state.credential,
        heartbeat=heartbeat,
        heartbeat_period=heartbeat_period,
        metrics_period=metrics_period,
        backoff=backoff,
        on_status=lambda ok, message: say(message),
    )
    telemetry.start()
    sink = PortalMetricsSink(telemetry.outbox, counters, language_model=language_model)
    return TrainerReporting(telemetry, sink, counters, state)

"""Telemetry to the portal: signed heartbeats and training metrics, strictly off the training path.

Design brief section 3: a portal outage never slows or stops training or serving. So:

* callers only ever append to a bounded, thread-safe :class:`Outbox` (O(1), never blocks; when full the
  oldest entry is dropped and counted);
* one background task (:class:`TelemetryReporter`) sends heartbeats every period and the queued metrics in
  batches, running the blocking HTTP call in its own worker thread;
* when the portal is unreachable it retries with exponential backoff and jitter (:class:`Backoff`), and a
  429 is honoured through ``Retry-After``; a refusal (4xx) is logged with the portal's error code and
  reported to ``on_refused`` (the agent renews its credential or stops on a ban);
* synchronous code (the trainer) runs the reporter on its own loop thread via :class:`BackgroundTelemetry`
  and feeds it through :class:`PortalMetricsSink`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import math
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from node_agent.identity import Identity
from node_agent.portal_client import PortalClient, PortalRefused, PortalReply, PortalUnreachable
from node_agent.portal_protocol import MAX_METRICS_PER_BODY

__all__ = [
    "BackgroundTelemetry",
    "Backoff",
    "Outbox",
    "PortalMetricsSink",
    "TelemetryReporter",
    "TrainerCounters",
    "metric_point",
]

logger = logging.getLogger(__name__)
T = TypeVar("T")

MIN_HEARTBEAT_PERIOD = 5.0
MAX_HEARTBEAT_PERIOD = 3600.0


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff with jitter: after ``n`` failures in a row wait ``base * factor**(n-1)``,
    capped at ``maximum``, scaled by a random factor in [0.5, 1) so agents that lost the portal at the
    same moment do not all come back in the same second ("equal jitter")."""

    base: float = 1.0
    factor: float = 2.0
    maximum: float = 300.0

    def delay(self, failures: int, rand: float) -> float:
        exponent = min(max(failures, 1) - 1, 64)
        cap = min(self.maximum, self.base * self.factor**exponent)
        return cap * (0.5 + 0.5 * min(max(rand, 0.0), 1.0))


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


def metric_point(event: Any) -> dict[str, Any] | None:
    """A ``MetricsEvent`` as the portal's metrics body wants it; None if it holds non-finite numbers."""
    point = {
        "kind": event.kind,
        "step": int(event.step),
        "loss": float(event.loss),
        "accuracy": min(1.0, max(0.0, float(event.accuracy))),
        "samples_per_s": max(0.0, float(event.samples_per_s)),
        "experts_answered": int(event.experts_answered),
        "experts_failed": int(event.experts_failed),
        "timestamp": float(event.timestamp),
    }
    if not all(math.isfinite(point[k]) for k in ("loss", "samples_per_s", "timestamp")):
        return None
    return point


class TrainerCounters:
    """Totals a trainer's heartbeat reports, updated from its metrics events (any thread)."""

    def __init__(self, batch_size: int) -> None:
        self.batch_size = batch_size
        self.started = time.monotonic()
        self.steps = 0
        self.samples_per_s = 0.0
        self.answered = 0
        self.failed = 0
        #: Set once the trainer's ExpertCaller exists: calls per expert server since the last heartbeat.
        self.peer_requests: Callable[[], dict[bytes, int]] | None = None

    def take_peers(self, limit: int = 256) -> list[dict[str, Any]]:
        """The busiest expert servers since the last heartbeat, as the heartbeat's `peers` field."""
        counts = self.peer_requests() if self.peer_requests is not None else {}
        busiest = sorted(counts.items(), key=lambda item: item[1], reverse=True)[:limit]
        return [{"node_id": node_id.hex(), "requests": requests} for node_id, requests in busiest]

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

    def __init__(self, outbox: Outbox[dict[str, Any]], counters: TrainerCounters | None = None) -> None:
        self.outbox = outbox
        self.counters = counters
        self.skipped = 0

    def __call__(self, event: Any) -> None:
        if self.counters is not None:
            self.counters.observe(event)
        point = metric_point(event)
        if point is None:
            self.skipped += 1
            logger.debug("not reporting step %s: non-finite metrics", getattr(event, "step", "?"))
            return
        self.outbox.put(point)


class TelemetryReporter:
    """Background sender of heartbeats (``heartbeat`` gives the body minus credential) and queued metrics.

    ``credential`` is called for every body (the agent swaps in renewed credentials). ``on_status(ok,
    message)`` is told about transitions only: first success, first failure, recovery.
    """

    def __init__(
        self,
        client: PortalClient,
        identity: Identity,
        credential: Callable[[], str],
        heartbeat: Callable[[], dict[str, Any]] | None = None,
        *,
        heartbeat_period: float = 30.0,
        metrics_period: float = 5.0,
        outbox: Outbox[dict[str, Any]] | None = None,
        backoff: Backoff | None = None,
        rng: Callable[[], float] = random.random,
        on_status: Callable[[bool, str], None] | None = None,
        on_refused: Callable[[PortalRefused], None] | None = None,
    ) -> None:
        self.client = client
        self.identity = identity
        self.credential = credential
        self.heartbeat = heartbeat
        self.heartbeat_period = heartbeat_period
        self.metrics_period = metrics_period
        self._asked_metrics_period = metrics_period
        self.outbox: Outbox[dict[str, Any]] = outbox if outbox is not None else Outbox(10_000)
        self.backoff = backoff or Backoff()
        self.rng = rng
        self.on_status = on_status
        self.on_refused = on_refused
        self.failures = 0
        self.heartbeats_sent = 0
        self.metrics_sent = 0
        self.last_ok: float | None = None
        self.last_error: str | None = None
        self._ok: bool | None = None
        self._retry_at = 0.0
        self._next_heartbeat = 0.0
        self._next_metrics = 0.0
        self._wake = asyncio.Event()
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="portal-telemetry")
        self._task: asyncio.Task[None] | None = None

    @classmethod
    async def create(cls, *args: Any, **kwargs: Any) -> TelemetryReporter:
        """Build and start the background task (the first heartbeat goes out at once)."""
        reporter = cls(*args, **kwargs)
        reporter._task = asyncio.create_task(reporter._run(), name="portal-telemetry")
        reporter._task.add_done_callback(_log_task_error)
        return reporter

    # ---- loop --------------------------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            now = time.monotonic()
            if now < self._retry_at:
                await self._sleep(self._retry_at - now)
            elif self.heartbeat is not None and now >= self._next_heartbeat:
                await self._send_heartbeat()
            elif len(self.outbox) and now >= self._next_metrics:
                await self._send_metrics()
            else:
                due = [self._next_metrics if len(self.outbox) else now + self.metrics_period]
                if self.heartbeat is not None:
                    due.append(self._next_heartbeat)
                await self._sleep(max(0.05, min(due) - now))

    async def _sleep(self, seconds: float) -> None:
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout=seconds)

    async def _call(self, what: str, send: Callable[[], PortalReply]) -> PortalReply | None:
        """Run one blocking call in the worker thread; on failure schedule the retry and return None."""
        loop = asyncio.get_running_loop()
        try:
            reply = await loop.run_in_executor(self._executor, send)
        except PortalUnreachable as exc:
            self.failures += 1
            delay = self.backoff.delay(self.failures, self.rng())
            self._retry_at = time.monotonic() + delay
            self.last_error = str(exc)
            logger.warning(
                "portal unreachable (%s); %s failed %d time(s) in a row, retrying in %.1fs",
                exc,
                what,
                self.failures,
                delay,
            )
            self._transition(False, f"{what} failing: portal unreachable, retrying in {delay:.0f}s")
            return None
        except PortalRefused as exc:
            self.last_error = str(exc)
            if exc.status == 429:
                self.failures += 1
                delay = exc.retry_after or self.backoff.delay(self.failures, self.rng())
                self._retry_at = time.monotonic() + delay
                logger.warning("portal rate-limited %s; retrying in %.1fs", what, delay)
            else:
                logger.error("portal refused %s: %s", what, exc)
                self._transition(False, f"{what} refused: {exc.code} {exc.detail}".strip())
            if self.on_refused is not None:
                try:
                    self.on_refused(exc)
                except Exception:
                    logger.exception("on_refused callback failed")
            return None
        if self.failures:
            logger.info("portal reachable again after %d failed attempt(s)", self.failures)
        self.failures = 0
        self.last_ok = time.time()
        self._transition(True, f"{what} ok")
        return reply

    def _transition(self, ok: bool, message: str) -> None:
        if self._ok is ok:
            return
        self._ok = ok
        if self.on_status is not None:
            try:
                self.on_status(ok, message)
            except Exception:
                logger.exception("on_status callback failed")

    async def _send_heartbeat(self) -> None:
        assert self.heartbeat is not None
        self._next_heartbeat = time.monotonic() + self.heartbeat_period
        try:
            body = dict(self.heartbeat())
            body["credential"] = self.credential()
        except Exception:
            logger.exception("could not build the heartbeat body")
            return
        reply = await self._call("heartbeat", lambda: self.client.heartbeat(self.identity, body))
        if reply is None:
            return
        self.heartbeats_sent += 1
        period = reply.data.get("next_heartbeat_s")
        if isinstance(period, int | float) and not isinstance(period, bool) and math.isfinite(period):
            self.heartbeat_period = min(MAX_HEARTBEAT_PERIOD, max(MIN_HEARTBEAT_PERIOD, float(period)))
            self._next_heartbeat = time.monotonic() + self.heartbeat_period
            # The portal's budget is two bodies per heartbeat period (heartbeats and metrics share it), so
            # queued metrics go at most once per period: faster, a long run is rate-limited over and over.
            self.metrics_period = max(self._asked_metrics_period, self.heartbeat_period)

    async def _send_metrics(self) -> bool:
        self._next_metrics = time.monotonic() + self.metrics_period
        batch = self.outbox.take(MAX_METRICS_PER_BODY)
        if not batch:
            return True
        body = {
            "credential": self.credential(),
            "node_id": self.identity.node_id.hex(),
            "metrics": batch,
        }
        reply = await self._call("metrics", lambda: self.client.metrics(self.identity, body))
        if reply is not None:
            self.metrics_sent += len(batch)
            return True
        if time.monotonic() < self._retry_at:  # unreachable or rate-limited: keep them for later
            self.outbox.put_back(batch)
        else:  # refused as invalid: resending the same batch would be refused again
            logger.error("dropping %d metrics events the portal refused", len(batch))
        return False

    # ---- shutdown ----------------------------------------------------------------------------------------

    async def stop(self, flush_timeout: float = 3.0) -> None:
        """Cancel the loop; if the portal was reachable, send what is queued and a last heartbeat in time.

        The last heartbeat carries the final totals (a short training run may end between two heartbeats,
        and the dashboard would otherwise never see whom it called).
        """
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        deadline = time.monotonic() + flush_timeout
        if self.heartbeat is not None and self.heartbeats_sent and self.failures == 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._send_heartbeat(), flush_timeout)
        while len(self.outbox) and self.failures == 0 and time.monotonic() < deadline:
            try:
                sent = await asyncio.wait_for(self._send_metrics(), deadline - time.monotonic())
            except TimeoutError:
                break
            if not sent:
                break
        self._executor.shutdown(wait=False, cancel_futures=True)


def _log_task_error(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.error("telemetry task died", exc_info=task.exception())


class BackgroundTelemetry:
    """A :class:`TelemetryReporter` on its own event-loop thread, for synchronous callers (the trainer)."""

    def __init__(self, **reporter_options: Any) -> None:
        self._options = reporter_options
        self.outbox: Outbox[dict[str, Any]] = reporter_options.pop("outbox", None) or Outbox(10_000)
        self.reporter: TelemetryReporter | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def start(self, timeout: float = 10.0) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(target=loop.run_forever, name="portal-telemetry-loop", daemon=True)
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(
            TelemetryReporter.create(outbox=self.outbox, **self._options), loop
        )
        self.reporter = future.result(timeout)

    def stop(self, flush_timeout: float = 3.0) -> None:
        if self._loop is None:
            return
        if self.reporter is not None:
            future = asyncio.run_coroutine_threadsafe(self.reporter.stop(flush_timeout), self._loop)
            with contextlib.suppress(Exception):
                future.result(flush_timeout + 2.0)
        self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(5.0)
        if not self._loop.is_running():
            self._loop.close()
        self._loop = self._thread = None

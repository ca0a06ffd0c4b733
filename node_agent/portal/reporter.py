"""Telemetry to the portal: signed heartbeats and training metrics, strictly off the training path.

A portal outage never slows or stops training or serving. So:

* callers only ever append to a bounded, thread-safe :class:`~node_agent.portal.outbox.Outbox`;
* one supervised background loop (:class:`TelemetryReporter`) sends heartbeats every period and the queued
  metrics in batches, running the blocking HTTP call in its own worker thread;
* when the portal is unreachable it retries with exponential backoff and jitter
  (:class:`~node_agent.backoff.Backoff`), and a 429 is honoured through ``Retry-After``; a refusal (4xx) is
  logged with the portal's error code and reported to ``on_refused`` (the agent renews its credential or
  stops on a ban);
* synchronous code (the trainer) runs the reporter on its own loop thread via :class:`BackgroundTelemetry`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import math
import random
import time
from collections.abc import Callable
from typing import Any

import msgspec

from node_agent.backoff import Backoff
from node_agent.identity import Identity
from node_agent.loop_thread import LoopThread
from node_agent.portal.client import PortalClient, PortalRefused, PortalReply, PortalUnreachable
from node_agent.portal.heartbeat_size import SIGNED_FIELDS_BYTES, fit_heartbeat
from node_agent.portal.outbox import Outbox
from node_agent.portal.schemas import MAX_METRICS_PER_BODY, HeartbeatBody, MetricPoint, MetricsBody
from node_agent.portal.signed_body import MAX_BODY_BYTES
from node_agent.supervisor import TaskSupervisor

__all__ = ["BackgroundTelemetry", "TelemetryReporter"]

logger = logging.getLogger(__name__)

MIN_HEARTBEAT_PERIOD = 5.0
MAX_HEARTBEAT_PERIOD = 3600.0


class TelemetryReporter:
    """Background sender of heartbeats and queued metrics.

    ``credential`` is called for every body (the agent swaps in renewed credentials);
    ``heartbeat(credential)`` builds the heartbeat body. ``on_status(ok, message)`` is told about
    transitions only: first success, first failure, recovery. The loop runs under ``supervisor`` (the
    agent runtime's), or its own.
    """

    LOOP = "portal-telemetry"

    def __init__(
        self,
        client: PortalClient,
        identity: Identity,
        credential: Callable[[], str],
        heartbeat: Callable[[str], HeartbeatBody] | None = None,
        *,
        heartbeat_period: float = 30.0,
        metrics_period: float = 5.0,
        outbox: Outbox[MetricPoint] | None = None,
        backoff: Backoff | None = None,
        rng: Callable[[], float] = random.random,
        on_status: Callable[[bool, str], None] | None = None,
        on_refused: Callable[[PortalRefused], None] | None = None,
        supervisor: TaskSupervisor | None = None,
        on_heartbeat_sent: Callable[[HeartbeatBody], None] | None = None,
    ) -> None:
        self.client = client
        self.identity = identity
        self.credential = credential
        self.heartbeat = heartbeat
        self.heartbeat_period = heartbeat_period
        self.metrics_period = metrics_period
        self._asked_metrics_period = metrics_period
        self.outbox: Outbox[MetricPoint] = outbox if outbox is not None else Outbox(10_000)
        self.backoff = backoff or Backoff()
        self.rng = rng
        self.on_status = on_status
        self.on_refused = on_refused
        #: Told each heartbeat the portal accepted (the server then forgets the receipts it carried).
        self.on_heartbeat_sent = on_heartbeat_sent
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
        self._own_supervisor = supervisor is None
        self.supervisor = supervisor or TaskSupervisor("portal telemetry")
        self._running = False

    @classmethod
    async def create(cls, *args: Any, **kwargs: Any) -> TelemetryReporter:
        """Build and start the background task (the first heartbeat goes out at once)."""
        reporter = cls(*args, **kwargs)
        reporter.supervisor.start(cls.LOOP, reporter._run)
        reporter._running = True
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

    async def _send_heartbeat(self, *, going_offline: bool = False) -> None:
        assert self.heartbeat is not None
        self._next_heartbeat = time.monotonic() + self.heartbeat_period
        try:
            body = self.heartbeat(self.credential())
            if going_offline:
                body = msgspec.structs.replace(body, going_offline=True)
            body = fit_heartbeat(body, keep_free=0)  # a body over the limit would be refused whole
        except Exception:
            logger.exception("could not build the heartbeat body")
            return
        reply = await self._call("heartbeat", lambda: self.client.heartbeat(self.identity, body))
        if reply is None:
            return
        self.heartbeats_sent += 1
        if self.on_heartbeat_sent is not None:
            try:
                self.on_heartbeat_sent(body)
            except Exception:
                logger.exception("on_heartbeat_sent callback failed")
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
        body = self._fitting_body(batch)
        batch = body.metrics
        reply = await self._call("metrics", lambda: self.client.metrics(self.identity, body))
        if reply is not None:
            self.metrics_sent += len(batch)
            return True
        if time.monotonic() < self._retry_at:  # unreachable or rate-limited: keep them for later
            self.outbox.put_back(batch)
        else:  # refused as invalid: resending the same batch would be refused again
            logger.error("dropping %d metrics events the portal refused", len(batch))
        return False

    def _fitting_body(self, batch: list[MetricPoint]) -> MetricsBody:
        """A metrics body of the first points of `batch` that fit the portal's body limit once signed (ts and
        nonce added); the others go back to the front of the outbox for the next body."""
        keep = len(batch)
        while True:
            body = MetricsBody(
                credential=self.credential(), node_id=self.identity.node_id.hex(), metrics=batch[:keep]
            )
            if keep == 1 or len(msgspec.json.encode(body)) <= MAX_BODY_BYTES - SIGNED_FIELDS_BYTES:
                self.outbox.put_back(batch[keep:])
                return body
            keep = max(1, keep * 3 // 4)

    # ---- shutdown ----------------------------------------------------------------------------------------

    async def stop(self, flush_timeout: float = 3.0) -> None:
        """Cancel the loop; if the portal was reachable, send what is queued and a last heartbeat in time.

        The last heartbeat carries the final totals (a short training run may end between two heartbeats,
        and the dashboard would otherwise never see whom it called) and says ``going_offline``, so the portal
        shows the node offline at once instead of after its offline threshold (90 s).
        """
        if self._running:
            self._running = False
            await self.supervisor.stop(self.LOOP)
            if self._own_supervisor:
                await self.supervisor.close()
        deadline = time.monotonic() + flush_timeout
        if self.heartbeat is not None and self.heartbeats_sent and self.failures == 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._send_heartbeat(going_offline=True), flush_timeout)
        while len(self.outbox) and self.failures == 0 and time.monotonic() < deadline:
            try:
                sent = await asyncio.wait_for(self._send_metrics(), deadline - time.monotonic())
            except TimeoutError:
                break
            if not sent:
                break
        self._executor.shutdown(wait=False, cancel_futures=True)


class BackgroundTelemetry:
    """A :class:`TelemetryReporter` on its own event-loop thread, for synchronous callers (the trainer)."""

    def __init__(self, **reporter_options: Any) -> None:
        self._options = reporter_options
        self.outbox: Outbox[MetricPoint] = reporter_options.pop("outbox", None) or Outbox(10_000)
        self.reporter: TelemetryReporter | None = None
        self._thread = LoopThread("portal-telemetry-loop")

    def start(self, timeout: float = 10.0) -> None:
        self._thread.start()
        future = self._thread.run(TelemetryReporter.create(outbox=self.outbox, **self._options))
        self.reporter = future.result(timeout)

    def stop(self, flush_timeout: float = 3.0) -> None:
        teardown = self.reporter.stop(flush_timeout) if self.reporter is not None else None
        self._thread.stop(teardown, timeout=flush_timeout + 2.0)

"""Telemetry against a real local HTTP portal: signed heartbeats, metrics batches, backoff, recovery, 429."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest
from local_portal import LocalPortal

from node_agent.backoff import Backoff
from node_agent.identity import Identity
from node_agent.portal.client import PortalClient, PortalRefused, PortalUnreachable
from node_agent.portal.reporter import TelemetryReporter
from node_agent.portal.schemas import HeartbeatBody, MetricPoint, PeerActivity
from tests.processes import free_port, wait_until_async

FAST = Backoff(base=0.05, factor=2.0, maximum=0.4)


def heartbeat_fields(identity: Identity):
    def build(credential: str) -> HeartbeatBody:
        return HeartbeatBody(
            credential=credential,
            node_id=identity.node_id.hex(),
            endpoint="127.0.0.1:4000",
            agent_version="0.1.0",
            platform="test",
            role="server",
            experts=["ffn.0.0"],
            requests=1,
            samples=64,
            failures=0,
            bytes_in=10,
            bytes_out=20,
            samples_per_s=1.5,
            uptime_s=2.0,
            peers=[PeerActivity(node_id="ab" * 20, requests=3)],
        )

    return build


def point(step: int) -> MetricPoint:
    return MetricPoint(
        step=step,
        loss=1.0 / step,
        accuracy=0.5,
        samples_per_s=10.0,
        experts_answered=4,
        experts_failed=0,
        timestamp=time.time(),
        run="0123456789abcdef",  # with a run id, 100 points no longer fit one 16 KB body
    )


async def make_reporter(url: str, identity: Identity, portal: LocalPortal | None = None, **options):
    token = (portal or LocalPortal()).credential_for(identity.public_key_bytes)
    statuses: list[tuple[bool, str]] = []
    reporter = await TelemetryReporter.create(
        PortalClient(url, timeout=2.0),
        identity,
        lambda: token,
        options.pop("heartbeat", heartbeat_fields(identity)),
        backoff=FAST,
        on_status=lambda ok, message: statuses.append((ok, message)),
        **{"heartbeat_period": 0.2, "metrics_period": 0.05, **options},
    )
    return reporter, statuses


async def test_heartbeats_and_metrics_reach_the_portal_signed(local_portal: LocalPortal) -> None:
    identity = Identity.generate()
    reporter, statuses = await make_reporter(local_portal.url, identity, local_portal)
    try:
        for step in range(1, 131):
            reporter.outbox.put(point(step))
        await wait_until_async(
            lambda: len(local_portal.heartbeats) >= 2 and len(local_portal.metrics) == 130, timeout=10
        )
    finally:
        await reporter.stop()
    assert local_portal.heartbeats[0]["node_id"] == identity.node_id.hex()
    # Batches of at most 100 points that fit the portal's body limit, in order, none refused.
    assert [m["step"] for m in local_portal.metrics] == list(range(1, 131))
    assert statuses == [(True, "heartbeat ok")]
    assert reporter.failures == 0
    assert local_portal.heartbeats[-1]["going_offline"] is True  # stop() sends a last "going offline" one
    assert not any(h["going_offline"] for h in local_portal.heartbeats[:-1])


async def test_unreachable_portal_backs_off_then_delivers_queued_metrics(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="node_agent.portal.reporter")
    port = free_port()
    portal = LocalPortal(port)
    identity = Identity.generate()
    reporter, statuses = await make_reporter(portal.url, identity, portal, heartbeat_period=0.1)
    try:
        for step in range(1, 11):
            reporter.outbox.put(point(step))
        await wait_until_async(lambda: reporter.failures >= 4, timeout=10)
        delays = [float(r.getMessage().rsplit("retrying in ", 1)[1].rstrip("s")) for r in caplog.records]
        assert "portal unreachable" in caplog.records[0].getMessage()
        assert max(delays) > min(delays)  # exponential, not a fixed retry interval
        assert statuses[0][0] is False and "failing" in statuses[0][1]
        assert len(reporter.outbox) == 10  # nothing was lost while the portal was away
        portal.start()
        try:
            await wait_until_async(lambda: len(portal.metrics) == 10 and portal.heartbeats, timeout=10)
            assert reporter.failures == 0
            assert statuses[-1] == (True, "heartbeat ok")
        finally:
            portal.stop()
    finally:
        await reporter.stop(flush_timeout=0.0)


async def test_rate_limit_honours_retry_after_and_refusals_drop_bad_batches(
    local_portal: LocalPortal,
) -> None:
    identity = Identity.generate()
    local_portal.behaviour.refuse = (429, "rate_limited")
    local_portal.behaviour.retry_after = 0.3
    reporter, _ = await make_reporter(local_portal.url, identity, local_portal, heartbeat=None)
    try:
        reporter.outbox.put(point(1))
        await wait_until_async(lambda: local_portal.requests >= 1, timeout=10)
        await asyncio.sleep(0.2)
        assert local_portal.requests == 1  # waiting out Retry-After, not hammering
        assert len(reporter.outbox) == 1  # kept for the retry
        local_portal.behaviour.refuse = (400, "invalid")
        local_portal.behaviour.retry_after = None
        await wait_until_async(lambda: local_portal.requests >= 2, timeout=10)
        await wait_until_async(
            lambda: len(reporter.outbox) == 0, timeout=10
        )  # a refused batch is dropped, not resent forever
    finally:
        await reporter.stop(flush_timeout=0.0)


def test_portal_client_errors_are_typed(local_portal: LocalPortal) -> None:
    identity = Identity.generate()
    client = PortalClient(local_portal.url, timeout=2.0)
    assert client.project_config("demo")["project"] == "demo"
    with pytest.raises(PortalRefused) as info:
        client.project_config("missing")
    assert info.value.status == 404 and info.value.code == "not_found"
    with pytest.raises(PortalRefused) as info:
        client.join(identity, "WRONG-CODE", "0.1.0", "test")
    assert info.value.code == "code_used"
    with pytest.raises(PortalUnreachable):
        PortalClient(f"127.0.0.1:{free_port()}", timeout=1.0).project_config("demo")


def test_join_polls_while_pending_approval_then_gets_a_credential(local_portal: LocalPortal) -> None:
    identity = Identity.generate()
    local_portal.behaviour.pending_polls = 2
    pending: list[bool] = []
    reply = PortalClient(local_portal.url).join_until_approved(
        identity, "CODE-1234", "0.1.0", "test", poll_interval=0.05, on_pending=lambda: pending.append(True)
    )
    assert pending == [True]  # told once, not at every poll
    assert reply["config"]["project"] == "demo" and local_portal.joins == [identity.public_key_bytes.hex()]
    with pytest.raises(PortalRefused):  # the code is one-time
        PortalClient(local_portal.url).join(identity, "CODE-1234", "0.1.0", "test")


async def test_metrics_keep_within_the_portals_budget_of_two_bodies_per_heartbeat_period(
    local_portal: LocalPortal,
) -> None:
    """The portal names its heartbeat period; metrics then go at most once per period (no endless 429s)."""
    local_portal.behaviour.next_heartbeat_s = 7
    identity = Identity.generate()
    reporter, _ = await make_reporter(local_portal.url, identity, local_portal, metrics_period=1.0)
    try:
        await wait_until_async(lambda: reporter.heartbeats_sent >= 1, timeout=10)
        assert reporter.heartbeat_period == 7.0 and reporter.metrics_period == 7.0
    finally:
        await reporter.stop()

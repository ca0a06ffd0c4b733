"""A joined agent's background loops under its supervisor, killed by raising inside them: the credential
renewal, the telemetry reporter and the revocation watcher restart, and a loop that keeps dying stops the
runtime loudly (a node must not serve on until its credential expires with a dead renewal)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from local_portal import LocalPortal

from node_agent.backoff import Backoff
from node_agent.identity import Identity
from node_agent.portal.client import PortalClient
from node_agent.portal.runtime import RENEWAL_LOOP, AgentOptions, AgentRuntime
from node_agent.portal.state import AgentState
from tests.processes import wait_until_async

FAST = Backoff(base=0.01, factor=2.0, maximum=0.02)


@pytest.fixture
async def runtime(local_portal: LocalPortal, tmp_path: Path) -> AsyncIterator[AgentRuntime]:
    identity = Identity.generate()
    credential = local_portal.credential_for(identity.public_key_bytes)
    state = AgentState(local_portal.url, "demo", credential, local_portal.config())
    options = AgentOptions(
        data_dir=tmp_path, listen="127.0.0.1:0", num_experts=1, heartbeat_period=0.2, revocation_period=0.05,
        rtc_loopback_only=True,
    )  # fmt: skip
    said: list[str] = []
    client = PortalClient(local_portal.url, timeout=2.0)
    runtime = await AgentRuntime.create(client, identity, state, options, said.append)
    runtime.supervisor.backoff = FAST
    runtime.supervisor.max_restarts = 2
    try:
        yield runtime
    finally:
        await runtime.shutdown()


async def test_a_crashed_renewal_restarts_and_renews(
    runtime: AgentRuntime, local_portal: LocalPortal
) -> None:
    client = runtime.renewer.client
    real_renew, crashes = client.renew, []

    def renew_crashing_once(identity: Identity, credential: str):  # a bug in the renewal path, once
        if not crashes:
            crashes.append(credential)
            raise RuntimeError("renewal bug")
        return real_renew(identity, credential)

    client.renew = renew_crashing_once  # type: ignore[method-assign]
    runtime.renewer.renew_now()
    await wait_until_async(lambda: runtime.supervisor.restarts(RENEWAL_LOOP) == 1, timeout=10)
    assert not runtime.stopped.is_set()
    old = runtime.state.credential
    await wait_until_async(lambda: runtime.supervisor.running(RENEWAL_LOOP), timeout=10)

    def nudged_and_renewed() -> bool:  # the restarted loop renews again (201 from the portal)
        runtime.renewer.renew_now()
        return bool(local_portal.renewals)

    await wait_until_async(nudged_and_renewed, timeout=10)
    await wait_until_async(lambda: runtime.state.credential != old, timeout=10)


async def test_a_renewal_that_keeps_crashing_stops_the_runtime_loudly(runtime: AgentRuntime) -> None:
    def broken(identity: Identity, credential: str):
        raise RuntimeError("renewal broken for good")

    runtime.renewer.client.renew = broken  # type: ignore[method-assign]

    def nudged_and_stopped() -> bool:
        runtime.renewer.renew_now()
        return runtime.stopped.is_set()

    await wait_until_async(nudged_and_stopped, timeout=10)
    assert "credential-renewal keeps failing" in runtime.stop_reason
    assert "renewal broken for good" in runtime.stop_reason


async def test_a_crashed_telemetry_loop_restarts_and_heartbeats_again(
    runtime: AgentRuntime, local_portal: LocalPortal
) -> None:
    telemetry = runtime.telemetry
    assert telemetry is not None
    await wait_until_async(lambda: telemetry.heartbeats_sent >= 1, timeout=10)
    real_take, crashed = telemetry.outbox.take, []

    def take_crashing_once(limit: int):
        if not crashed:
            crashed.append(limit)
            raise RuntimeError("outbox bug")
        return real_take(limit)

    telemetry.outbox.take = take_crashing_once  # type: ignore[method-assign]
    telemetry.outbox.put(_point())
    await wait_until_async(lambda: runtime.supervisor.restarts(telemetry.LOOP) == 1, timeout=10)
    sent = telemetry.heartbeats_sent
    await wait_until_async(lambda: telemetry.heartbeats_sent > sent and local_portal.metrics, timeout=10)
    assert not runtime.stopped.is_set()


async def test_a_revocation_watcher_that_keeps_crashing_stops_the_runtime(runtime: AgentRuntime) -> None:
    assert runtime.watcher is not None  # the test portal's project is gated

    async def broken_get(*args: object, **kwargs: object):
        raise RuntimeError("lookup bug")

    runtime.dht.get = broken_get
    await wait_until_async(lambda: runtime.stopped.is_set(), timeout=10)
    assert "revocation-watcher keeps failing" in runtime.stop_reason


def _point():
    import time

    from node_agent.portal.schemas import MetricPoint

    return MetricPoint(
        step=1, loss=0.5, accuracy=0.5, samples_per_s=1.0, experts_answered=1, experts_failed=0,
        timestamp=time.time(),
    )  # fmt: skip

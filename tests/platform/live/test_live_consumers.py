"""The live swarm socket through the real ASGI app and the Redis channel layer.

Nodes join through the real join API and heartbeat through the real telemetry API (Django test client),
so every diff a viewer receives was broadcast by the swarm services themselves.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.utils import timezone

from config.asgi import application
from live import hub as live_hub
from live.hub import hubs
from live.inbound import owner_key
from swarm import services as swarm_services
from swarm.events import announce_coverage
from swarm.models import Alert, Node

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("redis_layer")]

LOCAL = [(b"origin", b"http://localhost"), (b"host", b"localhost")]


def path(slug: str) -> str:
    return f"/ws/live/projects/{slug}/"


async def watch(slug: str, user: Any = None) -> WebsocketCommunicator:
    communicator = WebsocketCommunicator(application, path(slug), headers=LOCAL)
    if user is not None:
        communicator.scope["user"] = user  # what AuthMiddlewareStack would resolve from the session
    connected, code = await communicator.connect(timeout=10)
    assert connected, f"refused with {code}"
    return communicator


async def refused_code(slug: str, user: Any = None) -> int | None:
    """The close code a refused viewer gets. The socket is accepted first (so that a browser sees the
    code: Daphne turns a refusal before `accept` into a bare HTTP 403) and closed before anything is sent."""
    communicator = WebsocketCommunicator(application, path(slug), headers=LOCAL)
    if user is not None:
        communicator.scope["user"] = user
    connected, _ = await communicator.connect(timeout=10)
    assert connected
    message = await communicator.receive_output(timeout=10)
    assert message["type"] == "websocket.close", message
    await communicator.disconnect()
    return message.get("code")


async def receive_until(communicator: WebsocketCommunicator, predicate, timeout: float = 10.0) -> list[dict]:
    """Messages received until one satisfies `predicate` (that one included)."""
    received: list[dict] = []
    deadline = time.monotonic() + timeout
    while True:
        message = await communicator.receive_json_from(timeout=max(0.1, deadline - time.monotonic()))
        received.append(message)
        if predicate(message):
            return received


def diffs_of(message: dict) -> list[dict]:
    if message["type"] == "swarm.batch":
        return message["diffs"]
    if message["type"] == "swarm.snapshot":
        return []
    return [message]


def has_node(node_id: str, state: str | None = None):
    def check(message: dict) -> bool:
        return any(
            d["type"] == "node.upsert"
            and d["node"]["node_id"] == node_id
            and (state is None or d["node"]["state"] == state)
            for d in diffs_of(message)
        )

    return check


async def test_anyone_may_watch_a_public_project_and_gets_a_full_snapshot(
    project, volunteer, join_node
) -> None:
    node = await database_sync_to_async(join_node)(project, volunteer)
    await database_sync_to_async(node.heartbeat)(experts=["ffn.0.0"], samples_per_s=80.0)
    communicator = await watch(project.slug)
    try:
        snapshot = await communicator.receive_json_from(timeout=10)
        assert (snapshot["type"], snapshot["seq"]) == ("swarm.snapshot", 1)
        assert snapshot["project"]["grid"] == [4, 4] and snapshot["project"]["expert_prefix"] == "ffn"
        assert snapshot["viewer"] == {"owner_key": None, "staff": False}
        [view] = snapshot["nodes"]
        assert (view["node_id"], view["state"], view["role"]) == (node.node_id, "online", "server")
        assert view["owner"] == volunteer.display_name and view["experts"] == ["ffn.0.0"]
        assert snapshot["coverage"]["cells"] == {}  # covered cells only; nothing observed yet
        assert snapshot["limits"]["online_within"] > 0
        assert {"throughput", "training", "alerts", "edges"} <= snapshot.keys()
    finally:
        await communicator.disconnect()


async def test_who_is_refused_at_connect(
    make_project, project, volunteer, other_researcher, staff, join_node
) -> None:
    assert await refused_code("no-such-project") == 4404
    draft = await database_sync_to_async(make_project)(launch=False, title="Draft", slug="draft")
    assert await refused_code(draft.slug) == 4403
    assert await refused_code(draft.slug, volunteer) == 4403
    await (await watch(draft.slug, staff)).disconnect()

    private = await database_sync_to_async(make_project)(
        title="Private", slug="private", join_policy="approval"
    )
    assert await refused_code(private.slug) == 4403
    assert await refused_code(private.slug, other_researcher) == 4403
    await (await watch(private.slug, private.owner)).disconnect()
    # A volunteer becomes a member once the owner approves their node.
    member = await database_sync_to_async(Node.objects.create)(
        project=private, user=volunteer, public_key="11" * 32, node_id="22" * 20, state="pending"
    )
    assert await refused_code(private.slug, volunteer) == 4403
    await database_sync_to_async(swarm_services.node_approve)(
        node=member, actor=private.owner, now=timezone.now()
    )
    await (await watch(private.slug, volunteer)).disconnect()


async def test_heartbeats_state_changes_coverage_and_metrics_arrive_as_diffs(
    project, volunteer, staff, join_node
) -> None:
    server = await database_sync_to_async(join_node)(project, volunteer)
    trainer = await database_sync_to_async(join_node)(project, volunteer)
    communicator = await watch(project.slug, volunteer)
    try:
        snapshot = await communicator.receive_json_from(timeout=10)
        assert snapshot["viewer"]["owner_key"] == owner_key(
            __import__("django.conf").conf.settings.SECRET_KEY, volunteer.pk
        )
        assert {n["state"] for n in snapshot["nodes"]} == {"registered"}

        await database_sync_to_async(server.heartbeat)(experts=["ffn.1.2"], samples_per_s=120.0)
        got = await receive_until(communicator, has_node(server.node_id, "online"))
        upsert = next(d for m in got for d in diffs_of(m) if d["type"] == "node.upsert")
        assert upsert["node"]["owner_key"] == snapshot["viewer"]["owner_key"]  # "your node" in the browser
        assert upsert["node"]["samples_per_s"] == 120.0 and time.time() - upsert["at"] < 10

        await database_sync_to_async(trainer.heartbeat)(role="trainer", peers=[(server.node_id, 42)])
        got = await receive_until(
            communicator, lambda m: any(d["type"] == "edges.changed" for d in diffs_of(m))
        )
        edges = next(d for m in got for d in diffs_of(m) if d["type"] == "edges.changed")
        assert edges["source"] == trainer.node_id and edges["targets"] == [
            {"node_id": server.node_id, "requests": 42}
        ]

        await database_sync_to_async(trainer.metrics)([(1, 2.3, 0.1), (2, 2.1, 0.2)])
        got = await receive_until(
            communicator,
            lambda m: any(d["type"] == "metrics.appended" and d["series"] == "training" for d in diffs_of(m)),
        )
        metrics = next(d for m in got for d in diffs_of(m) if d["type"] == "metrics.appended")
        assert [(p["step"], p["loss"]) for p in metrics["points"]] == [(1, 2.3), (2, 2.1)]

        cells = {f"ffn.{i}.{j}": 0 for i in range(4) for j in range(4)} | {"ffn.1.2": 1}
        await database_sync_to_async(announce_coverage)(project.slug, timezone.now(), cells)
        got = await receive_until(
            communicator, lambda m: any(d["type"] == "coverage.changed" for d in diffs_of(m))
        )
        coverage = next(d for m in got for d in diffs_of(m) if d["type"] == "coverage.changed")
        assert coverage["coverage"]["cells"]["ffn.1.2"] == 1

        row = await database_sync_to_async(Node.objects.select_related("project").get)(node_id=server.node_id)
        await database_sync_to_async(swarm_services.node_ban)(
            node=row, actor=staff, reason="test", now=timezone.now()
        )
        await receive_until(communicator, has_node(server.node_id, "banned"))
    finally:
        await communicator.disconnect()


def has_diff(kind: str, **fields: Any):
    def check(message: dict) -> bool:
        return any(
            d["type"] == kind and all(d.get(k) == v for k, v in fields.items()) for d in diffs_of(message)
        )

    return check


async def test_replica_states_in_heartbeats_reach_the_replicas_panel_as_one_bounded_diff(
    project, volunteer, join_node
) -> None:
    first = await database_sync_to_async(join_node)(project, volunteer)
    second = await database_sync_to_async(join_node)(project, volunteer)
    await database_sync_to_async(first.heartbeat)(
        experts=["ffn.0.0"],
        replica_states=[{"uid": "ffn.0.0", "step": 40, "averaged_age_s": None}],
        averaging_rounds=(3, 1),
    )
    communicator = await watch(project.slug)
    try:
        snapshot = await communicator.receive_json_from(timeout=10)
        assert snapshot["replicas"] == {
            "cells": [{"uid": "ffn.0.0", "step": 40, "averaged_at": None}],
            "cells_count": 1,
            "rounds_completed": 3,
            "rounds_failed": 1,
        }
        sent = time.time()
        await database_sync_to_async(second.heartbeat)(
            experts=["ffn.0.0", "ffn.0.1"],
            replica_states=[
                {"uid": "ffn.0.0", "step": 55, "averaged_age_s": 2.0},
                {"uid": "ffn.0.1", "step": 9, "averaged_age_s": None},
            ],
            averaging_rounds=(8, 0),
        )
        got = await receive_until(communicator, has_diff("replicas.changed"))
        [diff] = [d for d in diffs_of(got[-1]) if d["type"] == "replicas.changed"]
        replicas = diff["replicas"]
        # Both online servers folded: newest step and newest averaging per cell, never-averaged first.
        assert [(c["uid"], c["step"]) for c in replicas["cells"]] == [("ffn.0.1", 9), ("ffn.0.0", 55)]
        assert replicas["cells"][0]["averaged_at"] is None
        averaged_at = replicas["cells"][1]["averaged_at"]
        assert sent - 5 < averaged_at + 2.0 < time.time() + 1  # a time (the browser ticks), not an age
        counts = (replicas["rounds_completed"], replicas["rounds_failed"], replicas["cells_count"])
        assert counts == (11, 1, 2)

        # The same report again changes nothing on the panel: only the node's upsert is sent.
        await database_sync_to_async(first.heartbeat)(
            experts=["ffn.0.0"],
            replica_states=[{"uid": "ffn.0.0", "step": 40, "averaged_age_s": None}],
            averaging_rounds=(3, 1),
        )
        got = await receive_until(communicator, has_node(first.node_id))
        assert not any(d["type"] == "replicas.changed" for m in got for d in diffs_of(m))

        # A server that leaves no longer counts.
        row = await database_sync_to_async(Node.objects.select_related("project").get)(node_id=second.node_id)
        await database_sync_to_async(swarm_services.node_set_state)(
            node=row, state="offline", reason="test", now=timezone.now()
        )
        got = await receive_until(communicator, has_diff("replicas.changed"))
        [diff] = [d for d in diffs_of(got[-1]) if d["type"] == "replicas.changed"]
        assert diff["replicas"]["cells"] == snapshot["replicas"]["cells"]
        assert diff["replicas"]["rounds_completed"] == 3
    finally:
        await communicator.disconnect()


async def test_a_node_appears_when_it_joins_before_any_heartbeat(project, volunteer, join_node) -> None:
    communicator = await watch(project.slug)
    try:
        await communicator.receive_json_from(timeout=10)
        node = await database_sync_to_async(join_node)(project, volunteer)
        got = await receive_until(communicator, has_node(node.node_id, "registered"))
        upsert = next(d for m in got for d in diffs_of(m) if d["type"] == "node.upsert")
        assert upsert["node"]["last_heartbeat"] is None and upsert["node"]["owner"] == volunteer.display_name
    finally:
        await communicator.disconnect()


async def test_alerts_raised_and_resolved_by_the_observer_are_broadcast(project, monkeypatch) -> None:
    """No polling: the alert poll is pushed out of reach, so only the services' broadcasts can arrive."""
    from swarm.observations import observation_record

    monkeypatch.setattr(live_hub, "ALERT_POLL_S", 3600.0)
    communicator = await watch(project.slug)
    try:
        await communicator.receive_json_from(timeout=10)
        await database_sync_to_async(observation_record)(
            project_id=project.pk, announced=None, error="timeout", now=timezone.now()
        )
        got = await receive_until(communicator, has_diff("alert.raised"))
        raised = next(d for m in got for d in diffs_of(m) if d["type"] == "alert.raised")
        assert raised["alert"]["kind"] == "observer" and "timeout" in raised["alert"]["message"]
        # The DHT is readable again (and empty): the observer alert clears, a coverage alert opens.
        await database_sync_to_async(observation_record)(
            project_id=project.pk, announced={}, error="", now=timezone.now()
        )
        got = await receive_until(communicator, has_diff("alert.cleared", alert_id=raised["alert"]["id"]))
        diffs = [d for m in got for d in diffs_of(m)]
        if not any(d["type"] == "alert.raised" for d in diffs):
            got = await receive_until(communicator, has_diff("alert.raised"))
            diffs = [d for m in got for d in diffs_of(m)]
        coverage = next(d for d in diffs if d["type"] == "alert.raised")
        assert coverage["alert"]["kind"] == "coverage" and coverage["alert"]["severity"] == "critical"
    finally:
        await communicator.disconnect()


async def test_alerts_changed_without_a_broadcast_are_found_by_the_poll(project, monkeypatch) -> None:
    monkeypatch.setattr(live_hub, "ALERT_POLL_S", 0.2)
    communicator = await watch(project.slug)
    try:
        await communicator.receive_json_from(timeout=10)
        alert = await database_sync_to_async(Alert.objects.create)(
            project=project, key="holes", kind="coverage", message="3 grid cells have no live expert"
        )
        got = await receive_until(communicator, has_diff("alert.raised"))
        raised = next(d for m in got for d in diffs_of(m) if d["type"] == "alert.raised")
        assert raised["alert"]["message"] == "3 grid cells have no live expert"
        alert.resolved_at = timezone.now()
        await database_sync_to_async(alert.save)()
        await receive_until(communicator, has_diff("alert.cleared", alert_id=str(alert.pk)))
    finally:
        await communicator.disconnect()


async def test_a_burst_of_changes_is_coalesced_into_a_few_messages(project, volunteer) -> None:
    """60 nodes change within a moment: the viewer gets them all, in a handful of messages."""
    nodes = await database_sync_to_async(
        lambda: [
            Node.objects.create(project=project, user=volunteer, public_key=f"{i:064x}", node_id=f"{i:040x}")
            for i in range(60)
        ]
    )()
    communicator = await watch(project.slug)
    try:
        await communicator.receive_json_from(timeout=10)
        started = time.monotonic()

        def burst() -> None:
            for node in nodes:
                swarm_services.node_set_state(node=node, state="online", reason="burst", now=timezone.now())

        await database_sync_to_async(burst)()
        seen: set[str] = set()
        messages = 0
        while len(seen) < 60:
            message = await communicator.receive_json_from(timeout=10)
            messages += 1
            seen |= {d["node"]["node_id"] for d in diffs_of(message) if d["type"] == "node.upsert"}
        elapsed = time.monotonic() - started
        assert messages <= elapsed / live_hub.Coalescer().min_interval + 2, (messages, elapsed)
        assert messages < 60
    finally:
        await communicator.disconnect()


async def test_resync_sends_a_fresh_snapshot_with_the_next_seq(project, volunteer, join_node) -> None:
    communicator = await watch(project.slug)
    try:
        first = await communicator.receive_json_from(timeout=10)
        assert first["nodes"] == []
        node = await database_sync_to_async(join_node)(project, volunteer)
        await database_sync_to_async(node.heartbeat)()
        got = await receive_until(communicator, has_node(node.node_id))
        last_seq = got[-1]["seq"]
        assert [m["seq"] for m in got] == list(range(2, last_seq + 1))
        # The browser noticed a gap (say seq jumped): it asks again and starts over from a snapshot.
        await communicator.send_json_to({"type": "resync"})
        fresh = await receive_until(communicator, lambda m: m["type"] == "swarm.snapshot")
        assert fresh[-1]["seq"] > last_seq
        assert [n["node_id"] for n in fresh[-1]["nodes"]] == [node.node_id]
    finally:
        await communicator.disconnect()


async def test_bad_browser_frames_are_ignored_and_the_socket_lives_on(project, volunteer, join_node) -> None:
    communicator = await watch(project.slug)
    try:
        await communicator.receive_json_from(timeout=10)
        await communicator.send_to(text_data="{not json")
        await communicator.send_to(bytes_data=b"\x00\x01")
        await communicator.send_json_to({"type": "node.upsert", "node": {}})
        assert await communicator.receive_nothing(timeout=0.3)
        node = await database_sync_to_async(join_node)(project, volunteer)
        await database_sync_to_async(node.heartbeat)()
        await receive_until(communicator, has_node(node.node_id))
    finally:
        await communicator.disconnect()


async def test_viewers_share_one_hub_that_closes_with_the_last(project) -> None:
    first, second = await watch(project.slug), await watch(project.slug)
    try:
        await first.receive_json_from(timeout=10)
        await second.receive_json_from(timeout=10)
        hub = hubs.hub_for(project.slug)
        assert hub is not None and hub.viewer_count == 2
    finally:
        await first.disconnect()
        assert not hub.closed
        await second.disconnect()
    await asyncio.sleep(0)
    assert hub.closed and hubs.hub_for(project.slug) is None


async def test_malformed_group_events_are_dropped_not_fatal(project, volunteer, join_node) -> None:
    from channels.layers import get_channel_layer

    communicator = await watch(project.slug)
    try:
        await communicator.receive_json_from(timeout=10)
        layer = get_channel_layer()
        await layer.group_send(f"swarm.{project.slug}", {"type": "swarm.node_changed", "node": "garbage"})
        await layer.group_send(f"swarm.{project.slug}", {"type": "swarm.unknown"})
        node = await database_sync_to_async(join_node)(project, volunteer)
        await database_sync_to_async(node.heartbeat)()
        await receive_until(communicator, has_node(node.node_id))
    finally:
        await communicator.disconnect()


async def test_a_viewer_over_the_cap_is_asked_to_come_back_later_not_refused(
    settings, project, make_project
) -> None:
    settings.LIVE_MAX_VIEWERS = 1
    first = await watch(project.slug)
    try:
        await first.receive_json_from(timeout=10)
        # Busy is its own close code (the page retries it); "not allowed" stays 4403 (the page gives up).
        assert await refused_code(project.slug) == 4503
    finally:
        await first.disconnect()
    second = await watch(project.slug)  # the slot came back with the first viewer's disconnect
    try:
        assert (await second.receive_json_from(timeout=10))["type"] == "swarm.snapshot"
    finally:
        await second.disconnect()
    private = await database_sync_to_async(make_project)(
        title="Private", slug="private", join_policy="approval"
    )
    assert await refused_code(private.slug) == 4403


async def test_a_database_that_fails_the_access_check_is_busy_not_forbidden(project, monkeypatch) -> None:
    from django.db import OperationalError

    from live import consumers

    def database_away(slug: str, user: Any) -> None:
        raise OperationalError("connection refused")

    monkeypatch.setattr(consumers, "check_access", database_away)
    assert await refused_code(project.slug) == 4503
    assert consumers.viewer_slots.taken == 0


@pytest.fixture
def statements(monkeypatch) -> list[str]:
    """Every SQL statement run from now on, from any thread (the consumers' database thread included)."""
    from django.db.backends import utils

    seen: list[str] = []
    run = utils.CursorWrapper._execute_with_wrappers

    def counted(self, sql, params, many, executor):
        seen.append(sql)
        return run(self, sql, params, many, executor)

    monkeypatch.setattr(utils.CursorWrapper, "_execute_with_wrappers", counted)
    return seen


async def test_an_anonymous_viewer_costs_no_query_but_its_snapshot(
    project, volunteer, join_node, statements
) -> None:
    await database_sync_to_async(join_node)(project, volunteer)
    first = await watch(project.slug)  # the first anonymous viewer asks the database; the rest do not
    second = None
    try:
        await first.receive_json_from(timeout=10)
        statements.clear()
        second = await watch(project.slug)
        assert (await second.receive_json_from(timeout=10))["type"] == "swarm.snapshot"
        on_connect = list(statements)
        statements.clear()
        await second.send_json_to({"type": "resync"})
        assert (await second.receive_json_from(timeout=10))["type"] == "swarm.snapshot"
        # A connect runs exactly the statements of one snapshot read: no session, user or access query.
        assert on_connect == statements and on_connect
        assert not [s for s in on_connect if "django_session" in s]
    finally:
        await first.disconnect()
        if second is not None:
            await second.disconnect()


async def test_a_session_cookie_is_the_signed_in_viewer_and_a_forged_one_is_nobody(
    make_project, volunteer, logged_in
) -> None:
    private = await database_sync_to_async(make_project)(
        title="Private", slug="private", join_policy="approval"
    )
    await database_sync_to_async(Node.objects.create)(
        project=private, user=volunteer, public_key="11" * 32, node_id="22" * 20, state="online"
    )
    client = await database_sync_to_async(logged_in)(volunteer)
    cookie = f"sessionid={client.cookies['sessionid'].value}".encode()

    member = WebsocketCommunicator(application, path(private.slug), headers=[*LOCAL, (b"cookie", cookie)])
    assert (await member.connect(timeout=10))[0]
    try:
        snapshot = await member.receive_json_from(timeout=10)
        assert snapshot["viewer"]["owner_key"] == owner_key(
            __import__("django.conf").conf.settings.SECRET_KEY, volunteer.pk
        )
    finally:
        await member.disconnect()
    for forged in (b"sessionid=not-a-session-key-at-all", b"sessionid=" + b"x" * 9000, b"\xff\xfe=;;"):
        communicator = WebsocketCommunicator(
            application, path(private.slug), headers=[*LOCAL, (b"cookie", forged)]
        )
        assert (await communicator.connect(timeout=10))[0]
        assert (await communicator.receive_output(timeout=10)) == {"type": "websocket.close", "code": 4403}
        await communicator.disconnect()


async def test_a_project_closed_to_the_public_refuses_anonymous_viewers_at_once(project) -> None:
    viewer = await watch(project.slug)  # the verdict "anyone may watch" is now cached
    await viewer.disconnect()

    def close_to_the_public() -> None:
        project.join_policy = "approval"
        project.save()

    await database_sync_to_async(close_to_the_public)()
    assert await refused_code(project.slug) == 4403

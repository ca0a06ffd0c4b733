"""One shape per object on the live path: the summary a service broadcasts is the one the browser gets.

The decoder (swarm.summaries.decode, used by live.inbound on whatever the channel layer delivers) is
fuzzed: any value is either accepted unchanged or refused with SummaryError / InboundError.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.events import project_swarm_group
from live.inbound import InboundError, node_replicas, to_diffs
from live.selectors import node_row_view
from node_agent.identity import Identity
from projects.models import Project
from swarm import api
from swarm.errors import SwarmRefusal
from swarm.events import node_summary, replica_report
from swarm.models import Node
from swarm.selectors import node_as_dict
from swarm.summaries import (
    MAX_UNIX_TIME,
    AlertSummary,
    CoverageReading,
    NodeSummary,
    ReplicaReport,
    ReplicaSummary,
    SummaryError,
    TrainingPoint,
    decode,
    iso_from_unix,
)

T0 = 1767225600.0
NODE: NodeSummary = {
    "node_id": "ab" * 20,
    "role": "server",
    "state": "online",
    "state_label": "Online",
    "state_changed": T0,
    "last_heartbeat": T0 + 9,
    "experts": ["ffn.0.1"],
    "announced": [],
    "reach": "serving",
    "probed_at": T0 + 5,
    "probe_reason": "",
    "serving": [],
    "agent_version": "0.1.0",
    "samples": 10,
    "requests": 2,
    "samples_per_s": 12.5,
}
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
    max_leaves=30,
)
SHAPES = [NodeSummary, AlertSummary, CoverageReading, TrainingPoint, ReplicaReport, ReplicaSummary]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=json_values, shape=st.sampled_from(SHAPES))
def test_any_value_is_accepted_unchanged_or_refused(value: Any, shape: type) -> None:
    try:
        decoded = decode(value, shape)
    except SummaryError:
        return
    assert decoded == value


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(field=st.sampled_from(sorted(NODE)), value=json_values)
def test_a_node_summary_with_one_hostile_field_is_refused_or_stays_in_bounds(field: str, value: Any) -> None:
    event = {"type": "swarm.node_changed", "project": "p", "node": {**NODE, field: value}}
    try:
        [diff] = to_diffs(event, received_at=T0)
    except InboundError:
        return
    node = diff["node"]
    json.dumps(node, allow_nan=False)  # the browser's JSON.parse must accept it
    assert 0 <= node["state_changed"] <= MAX_UNIX_TIME and node["node_id"]
    assert all(isinstance(uid, str) for uid in node["experts"] + node["announced"])


@settings(max_examples=200, deadline=None)
@given(
    event=st.dictionaries(
        st.sampled_from(["type", "node", "coverage", "points", "alert", "replicas"]), json_values
    )
)
def test_hostile_events_only_ever_raise_inbound_error(event: dict[str, Any]) -> None:
    for kind in (
        "swarm.node_changed",
        "swarm.coverage_changed",
        "swarm.metrics_received",
        "swarm.alert_changed",
    ):
        with contextlib.suppress(InboundError):
            to_diffs({**event, "type": kind}, received_at=T0)
    with contextlib.suppress(InboundError):
        node_replicas(event)


REPORT: ReplicaReport = {
    "states": [{"uid": "ffn.0.1", "step": 12, "averaged_at": T0 + 3}],
    "rounds_completed": 4,
    "rounds_failed": 1,
}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(field=st.sampled_from(["uid", "step", "averaged_at", "rounds_completed", "states"]), value=json_values)
def test_a_replica_report_with_one_hostile_field_is_refused_or_stays_in_bounds(
    field: str, value: Any
) -> None:
    if field in ("uid", "step", "averaged_at"):
        report = {**REPORT, "states": [{**REPORT["states"][0], field: value}]}
    else:
        report = {**REPORT, field: value}
    try:
        checked = node_replicas({"type": "swarm.node_changed", "replicas": report})
    except InboundError:
        return
    json.dumps(checked, allow_nan=False)
    assert checked["rounds_completed"] >= 0 and len(checked["states"]) <= 128
    for state in checked["states"]:
        assert isinstance(state["uid"], str) and len(state["uid"]) <= 128 and state["step"] >= 0
        assert state["averaged_at"] is None or 0 <= state["averaged_at"] <= MAX_UNIX_TIME


def test_a_replica_report_too_large_or_missing() -> None:
    assert node_replicas({"type": "swarm.node_changed", "node": NODE}) is None  # an older portal's event
    with pytest.raises(InboundError):
        node_replicas({"type": "swarm.node_changed", "node": NODE, "replicas": None})
    too_many = {**REPORT, "states": REPORT["states"] * 129}
    with pytest.raises(InboundError):
        node_replicas({"type": "swarm.node_changed", "replicas": too_many})


@given(
    moment=st.datetimes(
        min_value=datetime(2000, 1, 1), max_value=datetime(2099, 1, 1), timezones=st.just(UTC)
    )
)
def test_api_times_from_summaries_are_exact(moment: datetime) -> None:
    assert iso_from_unix(moment.timestamp()) == moment.isoformat()


def test_every_refusal_kind_has_an_http_status() -> None:
    from swarm import errors

    kinds = [v for v in vars(errors).values() if isinstance(v, type) and issubclass(v, SwarmRefusal)]
    assert set(kinds) - {SwarmRefusal} == set(api.HTTP_STATUS)
    assert api.http_status(errors.Conflict("replayed", "again")) == 409


@pytest.mark.django_db(transaction=True)
def test_the_broadcast_summary_is_the_snapshot_node_and_the_api_row(
    joined: dict[str, Any], project: Project, signed_post: Any, node_key: Identity,
    make_heartbeat: Callable[..., dict[str, Any]], listen: Callable[[str], Callable[[], dict[str, Any]]],
) -> None:  # fmt: skip
    events = listen(project_swarm_group(project.slug))
    response = signed_post(
        "/api/v1/agent/heartbeat", node_key, make_heartbeat(node_key, joined["credential"])
    )
    assert response.status_code == 202, response.content
    event = events()
    node = Node.objects.select_related("user").get(node_id=joined["node"]["node_id"])
    assert event["node"] == node_summary(node)
    assert node_replicas(event) == replica_report(node)

    [upsert] = to_diffs(event, received_at=event["node"]["last_heartbeat"])
    snapshot_view, _ = node_row_view(node)
    assert upsert["node"] | {"owner": "", "owner_key": ""} == snapshot_view | {"owner": "", "owner_key": ""}

    row = node_as_dict(node, node.last_heartbeat_at)
    summary = event["node"]
    assert (
        row["state_changed_at"]
        == node.state_changed_at.isoformat()
        == iso_from_unix(summary["state_changed"])
    )
    assert row["last_heartbeat_at"] == node.last_heartbeat_at.isoformat()
    assert (row["samples_per_s"], row["experts"], row["announced_experts"]) == (
        summary["samples_per_s"],
        summary["experts"],
        summary["announced"],
    )


@pytest.mark.django_db
def test_a_stored_non_finite_rate_never_reaches_json(joined: dict[str, Any], project: Project) -> None:
    Node.objects.filter(node_id=joined["node"]["node_id"]).update(samples_per_s=math.inf)
    node = Node.objects.select_related("user").get(node_id=joined["node"]["node_id"])
    assert node_summary(node)["samples_per_s"] == 0.0
    json.dumps(node_as_dict(node, node.state_changed_at), allow_nan=False)
    json.dumps(node_row_view(node)[0], allow_nan=False)

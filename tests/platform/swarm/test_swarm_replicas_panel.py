"""The dashboard's replicas panel: replicas per cell, newest step, staleness and averaging rounds."""

from __future__ import annotations

from typing import Any

import pytest
from django.utils import timezone

from node_agent.identity import Identity
from swarm.models import Node

pytestmark = pytest.mark.django_db


def test_heartbeats_feed_the_replicas_panel(
    client: Any,
    project: Any,
    joined: dict[str, Any],
    signed_post: Any,
    node_key: Identity,
    make_heartbeat: Any,
) -> None:
    from swarm.observations import observation_record
    from swarm.probe_schedule import ProbeOutcome

    states = [
        {"uid": "ffn.0.0", "step": 120, "averaged_age_s": 3.5},
        {"uid": "ffn.0.1", "step": 7, "averaged_age_s": None},
    ]
    body = make_heartbeat(
        node_key,
        joined["credential"],
        replica_states=states,
        averaging_rounds_completed=41,
        averaging_rounds_failed=2,
    )
    assert signed_post("/api/v1/agent/heartbeat", node_key, body).status_code == 202
    node = Node.objects.get()
    assert node.replica_states[0] == states[0] and node.averaging_rounds_completed == 41
    observation_record(
        project_id=project.pk,
        announced={node.node_id: {"ffn.0.0", "ffn.0.1"}, "cd" * 20: {"ffn.0.0"}},
        error="",
        now=timezone.now(),
        # A replica counts once the observer saw it serving (an `info` probe answered).
        probes={
            node.node_id: ProbeOutcome("serving", ("ffn.0.0", "ffn.0.1"), "", timezone.now().timestamp()),
            "cd" * 20: ProbeOutcome("serving", ("ffn.0.0",), "", timezone.now().timestamp()),
        },
    )
    text = client.get(f"/projects/{project.slug}/swarm/").content.decode()
    assert "Replicas and averaging" in text and "41 completed, 2 failed" in text
    assert "1 of 16 cells have two or more live replicas" in text
    assert "<code>ffn.0.0</code></td><td>2</td><td>120</td>" in text
    assert "never (no other replica)" in text


def test_hostile_replica_states_are_refused(
    project: Any, joined: dict[str, Any], signed_post: Any, node_key: Identity, make_heartbeat: Any
) -> None:
    for states in (
        [{"uid": "x" * 500, "step": 1}],
        [{"uid": "ffn.0.0", "step": -1}],
        [{"uid": "ffn.0.0", "step": 1, "averaged_age_s": -5.0}],
        [{"uid": "f", "step": 1}] * 129,
        "not a list",
    ):
        body = make_heartbeat(node_key, joined["credential"], replica_states=states)
        assert signed_post("/api/v1/agent/heartbeat", node_key, body).status_code == 400
    assert Node.objects.get().replica_states == []

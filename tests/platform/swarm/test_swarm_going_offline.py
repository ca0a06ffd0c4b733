"""A clean stop: the agent's last heartbeat says `going_offline`, and the node is offline at once (live event
included), stays offline through the observer's next rounds and comes back online with its next heartbeat."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from django.utils import timezone

from core.events import project_swarm_group
from node_agent.identity import Identity
from projects.models import Project
from swarm.models import Node, NodeState
from swarm.observations import observation_record

pytestmark = pytest.mark.django_db(transaction=True)
HEARTBEAT = "/api/v1/agent/heartbeat"


def test_a_going_offline_heartbeat_marks_the_node_offline_at_once(
    joined: dict[str, Any], project: Project, signed_post: Any, node_key: Identity, make_heartbeat: Any,
    listen: Callable[[str], Any],
) -> None:  # fmt: skip
    credential = joined["credential"]
    assert signed_post(HEARTBEAT, node_key, make_heartbeat(node_key, credential)).status_code == 202
    node = Node.objects.get(node_id=node_key.node_id.hex())
    assert node.state == NodeState.ONLINE

    events = listen(project_swarm_group(project.slug))
    last = make_heartbeat(node_key, credential, going_offline=True, samples=700)
    response = signed_post(HEARTBEAT, node_key, last)
    assert response.status_code == 202, response.content
    node.refresh_from_db()
    assert node.state == NodeState.OFFLINE and node.samples == 700  # the final totals are kept
    assert node.state_reason == "stopped cleanly (going-offline heartbeat)"
    event = events()
    assert event["type"] == "swarm.node_changed" and event["node"]["state"] == NodeState.OFFLINE

    # The observer does not read the recent heartbeat as "online" (nor raise an alert about its experts).
    assert observation_record(project_id=project.pk, announced={}, error="", now=timezone.now()) == []
    node.refresh_from_db()
    assert node.state == NodeState.OFFLINE

    # A restarted agent's first heartbeat wakes it.
    assert signed_post(HEARTBEAT, node_key, make_heartbeat(node_key, credential)).status_code == 202
    node.refresh_from_db()
    assert node.state == NodeState.ONLINE


@pytest.mark.parametrize("value", ["yes", 1, None, [True]])
def test_going_offline_must_be_a_boolean(
    joined: dict[str, Any], signed_post: Any, node_key: Identity, make_heartbeat: Any, value: Any
) -> None:
    body = make_heartbeat(node_key, joined["credential"], going_offline=value)
    response = signed_post(HEARTBEAT, node_key, body)
    assert response.status_code == 400 and response.json()["error"], response.content
    assert Node.objects.get(node_id=node_key.node_id.hex()).state == NodeState.REGISTERED

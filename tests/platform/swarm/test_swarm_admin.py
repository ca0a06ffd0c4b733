"""Admin screens change node state and project status only through the services.

Each test drives the real admin over the Django test client and listens on the real channel layer, so an
action counts only if the service ran: its rules held, its record was written and its event went out.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone

from accounts.models import User
from core.events import PROJECT_LISTING_GROUP, project_swarm_group
from projects.lifecycle import ProjectStatus
from projects.models import Project
from swarm.models import IssuedCredential, Node, NodeState, NodeStateChange, UserBan

pytestmark = pytest.mark.django_db(transaction=True)

Listener = Callable[[], dict[str, Any]]  # the `listen` fixture's waiter (conftest)


def admin_action(client: Client, model: str, action: str, pks: list[int]) -> Any:
    return client.post(
        f"/admin/{model}/",
        {"action": action, "_selected_action": [str(pk) for pk in pks]},
        follow=True,
    )


def node_of(project: Project, user: User, state: str = NodeState.REGISTERED) -> Node:
    return Node.objects.create(
        project=project, user=user, public_key="11" * 32, node_id="ab" * 20, state=state
    )


def test_ban_action_goes_through_node_ban(
    joined: dict[str, Any], project: Project, staff: User, logged_in: Callable[[User], Client],
    listen: Callable[[str], Listener],
) -> None:  # fmt: skip
    node = Node.objects.get(node_id=joined["node"]["node_id"])
    events = listen(project_swarm_group(project.slug))
    response = admin_action(logged_in(staff), "swarm/node", "ban_nodes", [node.pk])
    assert response.status_code == 200
    node.refresh_from_db()
    assert node.state == NodeState.BANNED and "admin" in node.state_reason
    assert not IssuedCredential.objects.filter(node=node, revoked_at__isnull=True).exists()
    assert NodeStateChange.objects.filter(node=node, state=NodeState.BANNED).exists()
    event = events()
    assert event["type"] == "swarm.node_changed"
    assert event["node"]["node_id"] == node.node_id and event["node"]["state"] == NodeState.BANNED


def test_approve_action_goes_through_node_approve(
    project: Project, volunteer: User, staff: User, logged_in: Callable[[User], Client],
    listen: Callable[[str], Listener],
) -> None:  # fmt: skip
    pending = node_of(project, volunteer, NodeState.PENDING)
    banned = Node.objects.create(
        project=project, user=volunteer, public_key="22" * 32, node_id="cd" * 20, state=NodeState.BANNED
    )
    events = listen(project_swarm_group(project.slug))
    admin_action(logged_in(staff), "swarm/node", "approve_nodes", [pending.pk, banned.pk])
    pending.refresh_from_db()
    banned.refresh_from_db()
    assert pending.state == NodeState.REGISTERED and pending.approved_at is not None
    assert banned.state == NodeState.BANNED and banned.approved_at is None  # only pending nodes
    event = events()
    assert (event["node"]["node_id"], event["node"]["state"]) == (pending.node_id, NodeState.REGISTERED)


def test_node_state_cannot_be_edited_in_the_form(
    project: Project, volunteer: User, staff: User, logged_in: Callable[[User], Client]
) -> None:
    node = node_of(project, volunteer, NodeState.BANNED)
    client = logged_in(staff)
    form = client.get(f"/admin/swarm/node/{node.pk}/change/")
    assert form.status_code == 200 and b'name="state"' not in form.content
    data = {
        "project": project.pk,
        "user": volunteer.pk,
        "public_key": node.public_key,
        "node_id": node.node_id,
        "state": NodeState.ONLINE,
        "state_reason": "edited",
        "experts": "[]",
        "announced_experts": "[]",
        "peers": "[]",
    }
    client.post(f"/admin/swarm/node/{node.pk}/change/", data)
    node.refresh_from_db()
    assert node.state == NodeState.BANNED and node.state_reason != "edited"
    assert client.get("/admin/swarm/node/add/").status_code == 403


def test_project_status_changes_only_through_the_lifecycle(
    project: Project, staff: User, logged_in: Callable[[User], Client], listen: Callable[[str], Listener]
) -> None:
    client = logged_in(staff)
    listing = listen(PROJECT_LISTING_GROUP)
    admin_action(client, "projects/project", "pause", [project.pk])
    project.refresh_from_db()
    assert project.status == ProjectStatus.PAUSED
    event = listing()
    assert event["type"] == "project.changed" and event["project"]["status"] == ProjectStatus.PAUSED

    admin_action(client, "projects/project", "archive", [project.pk])
    response = admin_action(client, "projects/project", "resume", [project.pk])  # archived is final
    project.refresh_from_db()
    assert project.status == ProjectStatus.ARCHIVED
    assert b"Only a paused project can be resumed" in response.content

    form = client.get(f"/admin/projects/project/{project.pk}/change/")
    assert form.status_code == 200 and b'name="status"' not in form.content


def test_user_bans_go_through_user_ban(
    joined: dict[str, Any], volunteer: User, staff: User, logged_in: Callable[[User], Client]
) -> None:
    client = logged_in(staff)
    assert client.get("/admin/swarm/userban/add/").status_code == 403
    admin_action(client, "accounts/user", "ban_from_swarms", [volunteer.pk])
    assert UserBan.objects.filter(user=volunteer).exists()
    node = Node.objects.get(node_id=joined["node"]["node_id"])
    assert node.state == NodeState.BANNED
    assert not IssuedCredential.objects.filter(node=node, revoked_at__isnull=True).exists()
    assert timezone.now() >= node.state_changed_at

"""One access rule per resource (swarm.permissions): the swarm page, the read-only API and the live socket
answer every kind of viewer alike, and a volunteer's endpoint (IP address) and platform are shown only
to that volunteer and staff."""

from __future__ import annotations

import json
import secrets
from typing import Any

import pytest
from channels.testing import WebsocketCommunicator
from django.test import Client

from accounts.models import User
from config.asgi import application
from projects.models import Project
from swarm.models import Node, NodeState
from tests.platform.conftest import make_user

VIEWERS = ["anonymous", "outsider", "pending", "member", "owner", "staff"]
ALLOWED = {
    "open": set(VIEWERS),
    "approval": {"member", "owner", "staff"},
    "draft": {"owner", "staff"},
}
SECRET_ENDPOINT = "198.51.100.23:31337"
SECRET_PLATFORM = "Linux-6.1-secret-laptop"


def add_node(project: Project, user: User, state: str) -> Node:
    key = secrets.token_hex(32)
    return Node.objects.create(
        project=project, user=user, public_key=key, node_id=key[:40], state=state,
        endpoint=SECRET_ENDPOINT, platform=SECRET_PLATFORM, agent_version="0.1.0",
    )  # fmt: skip


@pytest.fixture
def swarm_world(make_project: Any, researcher: User, staff: User) -> dict[str, Any]:
    """Three projects (open, approval, draft) and one user of each kind of viewer."""
    projects = {
        "open": make_project(title="Open swarm", join_policy="open"),
        "approval": make_project(title="Approval swarm", join_policy="approval"),
        "draft": make_project(title="Draft swarm", launch=False, join_policy="approval"),
    }
    users = {
        "anonymous": None,
        "outsider": make_user("olga@example.org"),
        "pending": make_user("pia@example.org"),
        "member": make_user("mia@example.org"),
        "owner": researcher,
        "staff": staff,
    }
    for project in projects.values():
        add_node(project, users["pending"], NodeState.PENDING)
        add_node(project, users["member"], NodeState.ONLINE)
    return {"projects": projects, "users": users}


def browser(user: User | None) -> Client:
    client = Client()
    if user is not None:
        client.force_login(user)
    return client


@pytest.mark.django_db
@pytest.mark.parametrize("kind", list(ALLOWED))
@pytest.mark.parametrize("viewer", VIEWERS)
def test_pages_and_api_obey_one_rule(swarm_world: dict[str, Any], kind: str, viewer: str) -> None:
    project = swarm_world["projects"][kind]
    client = browser(swarm_world["users"][viewer])
    allowed = viewer in ALLOWED[kind]
    page = client.get(f"/projects/{project.slug}/swarm/")
    swarm = client.get(f"/api/v1/projects/{project.slug}/swarm")
    nodes = client.get(f"/api/v1/projects/{project.slug}/nodes")
    assert [page.status_code, swarm.status_code, nodes.status_code] == ([200] * 3 if allowed else [404] * 3)
    for response in (page, swarm, nodes):
        text = response.content.decode()
        if not allowed:
            assert not any(n.node_id[:12] in text for n in Node.objects.filter(project=project))


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("kind", list(ALLOWED))
@pytest.mark.parametrize("viewer", VIEWERS)
async def test_the_live_socket_obeys_the_same_rule(
    swarm_world: dict[str, Any], kind: str, viewer: str
) -> None:
    project = swarm_world["projects"][kind]
    communicator = WebsocketCommunicator(
        application, f"/ws/live/projects/{project.slug}/", headers=[(b"origin", b"http://localhost"),
                                                                    (b"host", b"localhost")]
    )  # fmt: skip
    user = swarm_world["users"][viewer]
    if user is not None:
        communicator.scope["user"] = user
    connected, _ = await communicator.connect(timeout=10)
    assert connected  # accepted first: a refusal is a close code the page can act on (see live.consumers)
    try:
        message = await communicator.receive_output(timeout=10)
        if viewer not in ALLOWED[kind]:
            assert message == {"type": "websocket.close", "code": 4403}
        else:
            snapshot = json.loads(message["text"])
            assert snapshot["type"] == "swarm.snapshot"
            assert SECRET_ENDPOINT not in str(snapshot) and SECRET_PLATFORM not in str(snapshot)
    finally:
        await communicator.disconnect()


@pytest.mark.django_db
@pytest.mark.parametrize("viewer", VIEWERS)
def test_endpoint_and_platform_only_for_the_nodes_volunteer_and_staff(
    swarm_world: dict[str, Any], viewer: str
) -> None:
    project = swarm_world["projects"]["open"]
    client = browser(swarm_world["users"][viewer])
    member = swarm_world["users"]["member"]
    for url in (f"/api/v1/projects/{project.slug}/nodes", f"/api/v1/projects/{project.slug}/swarm"):
        rows = client.get(url).json()["nodes"]
        assert len(rows) == 2
        for row in rows:
            own = viewer == "member" and Node.objects.get(node_id=row["node_id"]).user_id == member.pk
            own = own or (viewer == "pending" and Node.objects.get(node_id=row["node_id"]).state == "pending")
            private = viewer == "staff" or own
            assert ("endpoint" in row) == private and ("platform" in row) == private
            if private:
                assert row["endpoint"] == SECRET_ENDPOINT and row["platform"] == SECRET_PLATFORM
    page = client.get(f"/projects/{project.slug}/swarm/").content.decode()
    assert SECRET_ENDPOINT.split(":")[0] not in page and SECRET_PLATFORM not in page

"""Join, renew and project config over the real URL map (signed bodies, PostgreSQL or SQLite)."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from node_agent.identity import Identity
from node_agent.portal.project_config import parse_project_config
from node_agent.portal.tokens import verify_credential
from projects.models import Project
from swarm.keys import portal_public_key
from swarm.models import IssuedCredential, JoinCode, Node, NodeState, SeenNonce

pytestmark = pytest.mark.django_db

AGENT = {"agent_version": "0.1.0", "platform": "Linux"}


def test_project_config_matches_the_shared_format(client: Any, project: Project, wheel_settings: Any) -> None:
    response = client.get(f"/api/v1/projects/{project.slug}/config")
    assert response.status_code == 200
    config = parse_project_config(response.json())
    assert config.project == project.slug and config.portal_key == portal_public_key()
    assert config.expert.grid == [4, 4] and config.expert.hidden_dim == 64 and config.expert.prefix == "ffn"
    assert config.agent.wheel_url.endswith(".whl") and len(config.agent.sha256) == 64
    assert client.get("/api/v1/projects/nope/config").status_code == 404


def test_join_trades_a_code_for_a_credential(
    joined: dict[str, Any], node_key: Identity, project: Project
) -> None:
    credential = verify_credential(
        joined["credential"], portal_public_key=portal_public_key(), now=time.time(), project=project.slug,
        node_public_key=node_key.public_key_bytes,
    )  # fmt: skip
    node = Node.objects.get(public_key=node_key.public_key_bytes.hex())
    assert credential.user == node.user_id and node.state == NodeState.REGISTERED
    assert joined["config"]["project"] == project.slug and joined["node"]["node_id"] == node.node_id
    assert IssuedCredential.objects.filter(cid=credential.cid, node=node).exists()


def test_a_reused_code_is_refused(
    signed_post: Any, join_code: Any, project: Project, wheel_settings: Any
) -> None:
    code = join_code(project)
    assert signed_post("/api/v1/agent/join", Identity.generate(), {"code": code, **AGENT}).status_code == 201
    again = signed_post("/api/v1/agent/join", Identity.generate(), {"code": code, **AGENT})
    assert again.status_code == 409 and again.json()["error"] == "code_used"
    assert Node.objects.count() == 1


def test_an_expired_code_is_refused_and_nothing_stored(
    signed_post: Any, join_code: Any, project: Project
) -> None:
    code = join_code(project)
    JoinCode.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    response = signed_post("/api/v1/agent/join", Identity.generate(), {"code": code, **AGENT})
    assert response.status_code == 410 and response.json()["error"] == "code_expired"
    assert not Node.objects.exists() and not SeenNonce.objects.exists()


def test_an_unknown_code_is_refused(signed_post: Any, project: Project) -> None:
    response = signed_post("/api/v1/agent/join", Identity.generate(), {"code": "ABCD-EFGH-JKMN", **AGENT})
    assert response.status_code == 400 and response.json()["error"] == "invalid_code"


def test_a_code_only_joins_its_own_project(
    signed_post: Any, join_code: Any, make_project: Any, project: Project, wheel_settings: Any
) -> None:
    other = make_project(title="Other swarm")
    key = Identity.generate()
    body = signed_post("/api/v1/agent/join", key, {"code": join_code(other), **AGENT}).json()
    assert body["config"]["project"] == other.slug
    with pytest.raises(Exception, match="wrong_project"):
        verify_credential(
            body["credential"], portal_public_key=portal_public_key(), now=time.time(), project=project.slug
        )
    assert not Node.objects.filter(project=project).exists()


def test_approval_projects_hold_nodes_until_the_owner_approves(
    signed_post: Any, join_code: Any, make_project: Any, researcher: Any, wheel_settings: Any
) -> None:
    from swarm import services

    gated = make_project(title="Approval swarm", join_policy="approval")
    code, key = join_code(gated), Identity.generate()
    first = signed_post("/api/v1/agent/join", key, {"code": code, **AGENT})
    assert first.status_code == 202 and first.json()["status"] == "pending_approval"
    node = Node.objects.get(project=gated)
    assert node.state == NodeState.PENDING
    JoinCode.objects.update(expires_at=timezone.now() - timedelta(seconds=1))  # stays valid while pending
    assert signed_post("/api/v1/agent/join", key, {"code": code, **AGENT}).status_code == 202
    stranger = signed_post("/api/v1/agent/join", Identity.generate(), {"code": code, **AGENT})
    assert stranger.status_code == 409
    services.node_approve(node=node, actor=researcher, now=timezone.now())
    approved = signed_post("/api/v1/agent/join", key, {"code": code, **AGENT})
    assert approved.status_code == 201 and "credential" in approved.json()
    assert Node.objects.get(pk=node.pk).state == NodeState.REGISTERED


def test_the_owners_own_node_needs_no_approval(
    signed_post: Any, join_code: Any, make_project: Any, researcher: Any, wheel_settings: Any
) -> None:
    gated = make_project(title="Owner's swarm", join_policy="approval")
    joined = signed_post(
        "/api/v1/agent/join", Identity.generate(), {"code": join_code(gated, researcher), **AGENT}
    )
    assert joined.status_code == 201 and "credential" in joined.json()
    node = Node.objects.get(project=gated)
    assert node.state == NodeState.REGISTERED and node.approved_at is not None and node.user == researcher


def test_renew_gives_a_fresh_credential_unless_banned(
    signed_post: Any, joined: dict[str, Any], node_key: Identity, researcher: Any
) -> None:
    from swarm import services

    renewed = signed_post("/api/v1/agent/renew", node_key, {"credential": joined["credential"]})
    assert renewed.status_code == 201 and renewed.json()["credential"] != joined["credential"]
    other = signed_post("/api/v1/agent/renew", Identity.generate(), {"credential": joined["credential"]})
    assert other.status_code == 401 and other.json()["error"] == "credential_wrong_node"
    node = Node.objects.get(public_key=node_key.public_key_bytes.hex())
    services.node_ban(node=node, actor=researcher, reason="test", now=timezone.now())
    refused = signed_post("/api/v1/agent/renew", node_key, {"credential": renewed.json()["credential"]})
    assert refused.status_code == 403
    assert IssuedCredential.objects.filter(node=node, revoked_at__isnull=True).count() == 0


def test_a_banned_node_cannot_join_again(
    signed_post: Any,
    joined: dict[str, Any],
    node_key: Identity,
    join_code: Any,
    project: Project,
    researcher: Any,
) -> None:
    from swarm import services

    node = Node.objects.get(public_key=node_key.public_key_bytes.hex())
    services.node_ban(node=node, actor=researcher, reason="test", now=timezone.now())
    response = signed_post("/api/v1/agent/join", node_key, {"code": join_code(project), **AGENT})
    assert response.status_code == 403 and response.json()["error"] == "banned"

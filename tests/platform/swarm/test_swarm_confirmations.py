"""Destructive actions ask first (a GET confirmation page holding the POST form, no JavaScript needed); staff
unban nodes and restore archived projects through the services; the health page's login is the portal's."""

from __future__ import annotations

from typing import Any

import pytest
from django.utils import timezone

from node_agent.identity import Identity
from projects.models import Project
from swarm import services
from swarm.models import Node, NodeState, NodeStateChange, UserBan

pytestmark = pytest.mark.django_db

AGENT = {"agent_version": "0.1.0", "platform": "Linux"}


def test_a_ban_link_shows_a_confirmation_and_changes_nothing_until_the_post(
    logged_in: Any, staff: Any, joined: dict[str, Any]
) -> None:
    node = Node.objects.get()
    admin = logged_in(staff)
    page = admin.get(f"/swarm/nodes/{node.pk}/ban/", {"next": "/swarm/health/"})
    text = page.content.decode()
    assert page.status_code == 200 and "data-confirm-submit" in text and 'method="post"' in text
    assert 'name="next" value="/swarm/health/"' in text and node.short_id in text
    assert Node.objects.get().state != NodeState.BANNED
    assert f'href="/swarm/nodes/{node.pk}/ban/?next=' in admin.get("/swarm/health/").content.decode()


def test_a_confirmation_page_never_sends_you_to_another_site(
    logged_in: Any, staff: Any, joined: dict[str, Any], project: Project
) -> None:
    node = Node.objects.get()
    text = logged_in(staff).get(f"/swarm/nodes/{node.pk}/ban/", {"next": "//evil.example/"}).content.decode()
    assert "evil.example" not in text and f'value="/projects/{project.slug}/swarm/"' in text


def test_staff_unban_a_node_with_a_record_and_a_live_event(
    logged_in: Any, staff: Any, researcher: Any, joined: dict[str, Any]
) -> None:
    node = Node.objects.get()
    services.node_ban(node=node, actor=staff, reason="test", now=timezone.now())
    owner = logged_in(researcher)
    assert owner.get(f"/swarm/nodes/{node.pk}/unban/").status_code == 200  # may look, the service refuses
    assert owner.post(f"/swarm/nodes/{node.pk}/unban/").status_code == 403
    assert Node.objects.get().state == NodeState.BANNED
    admin = logged_in(staff)
    assert "Unban…" in admin.get("/swarm/health/").content.decode()
    response = admin.post(f"/swarm/nodes/{node.pk}/unban/", {"next": "/swarm/health/"})
    assert response.status_code == 302 and response["Location"] == "/swarm/health/"
    node.refresh_from_db()
    assert node.state == NodeState.OFFLINE and node.state_reason.startswith("unbanned by")
    assert NodeStateChange.objects.filter(
        node=node, previous=NodeState.BANNED, state=NodeState.OFFLINE
    ).exists()


def test_a_node_of_a_banned_user_stays_banned(logged_in: Any, staff: Any, joined: dict[str, Any]) -> None:
    node = Node.objects.get()
    services.user_ban(user=node.user, actor=staff, reason="spam", now=timezone.now())
    page = logged_in(staff).post(f"/swarm/nodes/{node.pk}/unban/", follow=True)
    assert "lift that ban first" in page.content.decode()
    assert Node.objects.get().state == NodeState.BANNED


def test_staff_unban_a_user_from_the_ui_after_a_confirmation(
    logged_in: Any, staff: Any, researcher: Any, joined: dict[str, Any], project: Project, join_code: Any,
    signed_post: Any,
) -> None:  # fmt: skip
    node = Node.objects.get()
    other_key = Identity.generate()
    other = signed_post("/api/v1/agent/join", other_key, {"code": join_code(project), **AGENT})
    assert other.status_code == 201
    banned_alone = Node.objects.get(public_key=other_key.public_key_bytes.hex())
    services.node_ban(node=banned_alone, actor=staff, reason="spam on its own", now=timezone.now())
    services.user_ban(user=node.user, actor=staff, reason="spam", now=timezone.now())
    admin = logged_in(staff)
    health = admin.get("/swarm/health/").content.decode()
    assert f'href="/swarm/nodes/{node.pk}/unban-user/?next=' in health and "Ban user…" not in health
    confirm = admin.get(f"/swarm/nodes/{node.pk}/unban-user/", {"next": "/swarm/health/"}).content.decode()
    assert "data-confirm-submit" in confirm and node.user.display_name in confirm
    assert UserBan.objects.filter(user=node.user).exists(), "the confirmation page changes nothing"
    assert logged_in(researcher).post(f"/swarm/nodes/{node.pk}/unban-user/").status_code == 403
    response = admin.post(f"/swarm/nodes/{node.pk}/unban-user/", {"next": "/swarm/health/"})
    assert response.status_code == 302 and response["Location"] == "/swarm/health/"
    assert not UserBan.objects.filter(user=node.user).exists()
    node.refresh_from_db()
    assert node.state == NodeState.OFFLINE and node.state_reason.startswith("owner unbanned by")
    assert Node.objects.get(pk=banned_alone.pk).state == NodeState.BANNED, "its own ban is not lifted"
    assert services.user_unban(user=node.user, actor=staff, now=timezone.now()) == 0  # not banned: no-op


def test_archive_asks_first_and_only_staff_restore(
    logged_in: Any, staff: Any, researcher: Any, project: Project
) -> None:
    owner = logged_in(researcher)
    detail = owner.get(project.get_absolute_url()).content.decode()
    assert f'href="/projects/{project.slug}/archive/"' in detail
    confirm = owner.get(f"/projects/{project.slug}/archive/")
    assert confirm.status_code == 200 and "data-confirm-submit" in confirm.content.decode()
    assert Project.objects.get(pk=project.pk).status == "active"
    owner.post(f"/projects/{project.slug}/archive/")
    assert Project.objects.get(pk=project.pk).status == "archived"
    assert "Restore…" not in owner.get(project.get_absolute_url()).content.decode()
    assert owner.post(f"/projects/{project.slug}/restore/").status_code == 403
    assert owner.post(f"/projects/{project.slug}/resume/", follow=True).status_code == 200
    assert Project.objects.get(pk=project.pk).status == "archived"
    admin = logged_in(staff)
    assert "Restore…" in admin.get(project.get_absolute_url()).content.decode()
    admin.post(f"/projects/{project.slug}/restore/")
    assert Project.objects.get(pk=project.pk).status == "paused"
    page = admin.post(f"/projects/{project.slug}/restore/", follow=True)
    assert "Only an archived project can be restored." in page.content.decode()


def test_health_page_sends_anonymous_visitors_to_the_portal_login(client: Any) -> None:
    response = client.get("/swarm/health/")
    assert response.status_code == 302 and response["Location"].startswith("/accounts/login/?next=")

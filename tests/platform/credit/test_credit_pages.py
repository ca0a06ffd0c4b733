"""Credit pages: the leaderboard, a volunteer's own page with the privacy choice, public profiles."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone

from accounts.models import User
from credit.models import CreditProfile, NodeCredit, Team, WorkReceipt
from projects.models import Project
from swarm.models import Node

pytestmark = pytest.mark.django_db


@pytest.fixture
def credited_node(project: Project, volunteer: User) -> Node:
    node = Node.objects.create(project=project, user=volunteer, public_key="1" * 64, node_id="2" * 40)
    NodeCredit.objects.create(node=node, total=7e9, recent=7e9, recent_at=timezone.now())
    minute = int(timezone.now().timestamp() // 60) - 60
    trainer = Node.objects.create(project=project, user=project.owner, public_key="3" * 64, node_id="4" * 40)
    WorkReceipt.objects.create(
        project=project, server=node, trainer=trainer, cid="c", minute=minute, forward=1, backward=1,
        answers=1, first_nonce="a", last_nonce="b", chain="c", claimed_flops=7e9, flops=7e9,
    )  # fmt: skip
    return node


def test_leaderboard_and_profile_are_anonymous_until_the_volunteer_opts_in(
    credited_node: Node, volunteer: User, logged_in: Any, project: Project
) -> None:
    page = Client().get("/credit/").content.decode()
    assert "anonymous" in page and volunteer.display_name not in page and "7.0" in page
    assert Client().get(f"/credit/?project={project.slug}").status_code == 200
    assert Client().get("/credit/?project=nope").status_code == 404
    profile = Client().get(f"/credit/users/{volunteer.pk}/").content.decode()
    assert "anonymous" in profile and volunteer.display_name not in profile

    client = logged_in(volunteer)
    mine = client.get("/credit/mine/").content.decode()
    assert "<polyline" in mine or "credit per day" in mine
    assert client.post("/credit/privacy/", {"public_name": "on"}).status_code == 302
    assert CreditProfile.objects.get(user=volunteer).public_name
    assert volunteer.display_name in Client().get("/credit/").content.decode()
    client.post("/credit/privacy/", {})
    assert volunteer.display_name not in Client().get(f"/credit/users/{volunteer.pk}/").content.decode()


def test_my_credit_needs_a_login(credited_node: Node) -> None:
    assert Client().get("/credit/mine/").status_code == 302
    assert Client().post("/credit/privacy/", {"public_name": "on"}).status_code == 302
    assert Client().get("/credit/users/999999/").status_code == 404


def test_daily_series_puts_credit_on_its_day(credited_node: Node, volunteer: User) -> None:
    from credit.selectors import user_nodes_credit

    (row,) = user_nodes_credit(user_id=volunteer.pk, now=timezone.now() + timedelta(days=1), days=3)
    assert row.daily == [0.0, 7.0, 0.0]
    assert row.total_credit == 7.0


def test_volunteers_create_join_and_leave_teams(credited_node: Node, volunteer: User, logged_in: Any) -> None:
    client = logged_in(volunteer)
    client.post("/credit/team/", {"action": "create", "name": "Night owls"})
    team = Team.objects.get(name="Night owls")
    assert CreditProfile.objects.get(user=volunteer).team == team and team.founder == volunteer
    assert "Night owls" in Client().get("/credit/").content.decode()
    client.post("/credit/team/", {"action": "leave"})
    assert CreditProfile.objects.get(user=volunteer).team is None
    client.post("/credit/team/", {"action": "join", "team": str(team.pk)})
    assert CreditProfile.objects.get(user=volunteer).team == team
    client.post("/credit/team/", {"action": "join", "team": "99999999999999"})  # unknown: nothing changes
    assert CreditProfile.objects.get(user=volunteer).team == team

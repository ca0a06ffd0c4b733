"""Leaderboards and the stats export agree with each other and with the credit granted; names are private
unless the volunteer opted in."""

from __future__ import annotations

import gzip
import json
import xml.etree.ElementTree as ET
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone

from accounts.models import User
from credit.exports import stats_export
from credit.models import CreditProfile, NodeCredit, Team
from projects.models import Project
from swarm.models import Node
from tests.platform.conftest import make_user

pytestmark = pytest.mark.django_db


def _node(project: Project, user: User, index: int, flops: float, recent_age: timedelta) -> Node:
    node = Node.objects.create(
        project=project, user=user, public_key=f"{index:064x}", node_id=f"{index:040x}"
    )
    NodeCredit.objects.create(node=node, total=flops, recent=flops, recent_at=timezone.now() - recent_age)
    return node


@pytest.fixture
def credited(project: Project, make_project: Any, volunteer: User) -> dict[str, Any]:
    other_project = make_project(title="Other", slug="other")
    public = make_user("ada@example.com")
    team = Team.objects.create(name="Lovelace & co", founder=public)
    CreditProfile.objects.create(user=public, public_name=True, team=team)
    CreditProfile.objects.create(user=volunteer, team=team)
    Team.objects.create(name="Empty")
    _node(project, volunteer, 1, 3e9, timedelta(0))
    _node(other_project, volunteer, 2, 4e9, timedelta(days=7))
    _node(project, public, 3, 5e9, timedelta(0))
    return {"public": public, "volunteer": volunteer, "other": other_project}


def test_leaderboards_per_project_and_overall(credited: dict[str, Any], project: Project) -> None:
    overall = Client().get("/api/v1/credit/leaderboard").json()["users"]
    assert [(u["name"], u["total_credit"]) for u in overall] == [("anonymous", 7.0), ("Ada", 5.0)]
    per_project = Client().get(f"/api/v1/credit/leaderboard?project={project.slug}").json()["users"]
    assert [(u["name"], u["total_credit"]) for u in per_project] == [("Ada", 5.0), ("anonymous", 3.0)]
    # RAC: 3e9 fresh plus 4e9 a half-life ago (half of it) -> (3 + 2) GFLOP of decayed sum
    volunteer = overall[0]
    assert volunteer["recent_average_credit"] == pytest.approx(5.0 * 0.0990210, rel=1e-3)
    assert Client().get("/api/v1/credit/leaderboard?project=nope").status_code == 404


def test_stats_export_agrees_with_the_leaderboard(credited: dict[str, Any], tmp_path: Path,
                                                  settings: Any) -> None:  # fmt: skip
    settings.CREDIT_STATS_DIR = tmp_path
    assert Client().get("/api/v1/credit/stats/user.json").status_code == 404  # nothing exported yet
    assert stats_export(directory=tmp_path, now=timezone.now()) == {"users": 2, "teams": 2, "hosts": 3}
    board = {u["id"]: u for u in Client().get("/api/v1/credit/leaderboard").json()["users"]}
    exported = json.loads(b"".join(Client().get("/api/v1/credit/stats/user.json").streaming_content))
    assert {u["id"]: (u["name"], u["total_credit"]) for u in exported["users"]} == {
        i: (u["name"], u["total_credit"]) for i, u in board.items()
    }
    xml = gzip.decompress(b"".join(Client().get("/api/v1/credit/stats/user.gz").streaming_content))
    users = ET.fromstring(xml)
    assert {int(u.findtext("id")): float(u.findtext("total_credit")) for u in users} == {
        i: u["total_credit"] for i, u in board.items()
    }
    teams = ET.fromstring(gzip.decompress((tmp_path / "team.gz").read_bytes()))
    by_name = {t.findtext("name"): float(t.findtext("total_credit")) for t in teams}
    assert by_name == {"Lovelace & co": sum(u["total_credit"] for u in board.values()), "Empty": 0.0}
    api_teams = Client().get("/api/v1/credit/leaderboard").json()["teams"]
    assert {t["name"]: t["total_credit"] for t in api_teams} == by_name
    assert json.loads((tmp_path / "team.json").read_bytes())["teams"][0]["nusers"] == 2
    hosts = ET.fromstring(gzip.decompress((tmp_path / "host.gz").read_bytes()))
    assert sum(float(h.findtext("total_credit")) for h in hosts) == pytest.approx(12.0)
    assert Client().get("/api/v1/credit/stats/passwd").status_code == 404

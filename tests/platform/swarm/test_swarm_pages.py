"""Join page, agent download, My nodes, project dashboard, admin health with ban/approve, API docs."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from django.urls import resolve
from django.utils import timezone

from node_agent.identity import Identity
from swarm.housekeeping import contributions_roll_up, counter_delta, raw_prune
from swarm.models import ContributionBucket, HeartbeatSample, JoinCode, Node, NodeState

pytestmark = pytest.mark.django_db


def test_join_page_shows_one_command_with_a_fresh_code(
    logged_in: Any, volunteer: Any, project: Any, wheel_settings: Any
) -> None:
    browser = logged_in(volunteer)
    offer = browser.get(f"/projects/{project.slug}/join/")
    assert offer.status_code == 200 and "data-join-create" in offer.content.decode()
    assert not JoinCode.objects.exists()  # a plain GET (a link preview, a prefetch) creates nothing
    page = browser.post(f"/projects/{project.slug}/join/")
    assert page.status_code == 200 and page["Cache-Control"].startswith("max-age=0")
    text = page.content.decode()
    wheel = next(wheel_settings.glob("*.whl")).name
    assert f"colearn-agent/bin/pip install http://testserver/agent/{wheel}" in text
    assert "colearn-agent/bin/node-agent join http://testserver " in text and "Scripts" in text
    code = JoinCode.objects.get(user=volunteer, project=project)
    assert (code.expires_at - code.created_at).total_seconds() == 900


def test_join_codes_need_a_csrf_token(volunteer: Any, project: Any, wheel_settings: Any) -> None:
    from django.test import Client

    browser = Client(enforce_csrf_checks=True)
    browser.force_login(volunteer)
    assert browser.post(f"/projects/{project.slug}/join/").status_code == 403
    assert not JoinCode.objects.exists()


def test_join_codes_are_rate_limited_per_user(
    logged_in: Any, volunteer: Any, project: Any, wheel_settings: Any, settings: Any
) -> None:
    settings.SWARM = {**settings.SWARM, "RATE_JOIN_CODES_PER_USER": 3}
    browser = logged_in(volunteer)
    assert [browser.post(f"/projects/{project.slug}/join/").status_code for _ in range(3)] == [200] * 3
    refused = browser.post(f"/projects/{project.slug}/join/")
    assert refused.status_code == 429 and 1 <= int(refused["Retry-After"]) <= 3600
    assert "try again" in refused.content.decode() and JoinCode.objects.count() == 3


def test_join_page_needs_a_login_and_an_active_project(client: Any, project: Any, make_project: Any,
                                                       logged_in: Any, volunteer: Any) -> None:  # fmt: skip
    assert client.get(f"/projects/{project.slug}/join/").status_code == 302
    assert client.post(f"/projects/{project.slug}/join/").status_code == 302
    draft = make_project(title="Draft", launch=False)
    assert logged_in(volunteer).post(f"/projects/{draft.slug}/join/").status_code == 404
    assert not JoinCode.objects.exists()


def test_project_page_has_a_join_button(client: Any, project: Any) -> None:
    assert f'href="/projects/{project.slug}/join/"' in client.get(project.get_absolute_url()).content.decode()


def test_the_wheel_and_its_checksum_are_served(client: Any, wheel_settings: Any) -> None:
    wheel = next(wheel_settings.glob("*.whl"))
    download = client.get(f"/agent/{wheel.name}")
    body = b"".join(download.streaming_content)
    sums = client.get("/agent/SHA256SUMS").content.decode()
    assert f"{hashlib.sha256(body).hexdigest()}  {wheel.name}" in sums
    assert client.get("/agent/").status_code == 200
    assert client.get("/agent/../settings.py").status_code == 404
    assert client.get("/agent/evil.whl").status_code == 404


def test_my_nodes_shows_state_experts_and_credential(
    logged_in: Any,
    volunteer: Any,
    joined: dict[str, Any],
    signed_post: Any,
    node_key: Identity,
    make_heartbeat: Any,
) -> None:
    signed_post("/api/v1/agent/heartbeat", node_key, make_heartbeat(node_key, joined["credential"]))
    text = logged_in(volunteer).get("/nodes/").content.decode()
    assert node_key.node_id.hex()[:12] in text and "Online" in text and "ffn.0.0" in text and "Valid" in text
    assert "s ago" in text


def test_dashboard_shows_nodes_coverage_and_metrics(
    client: Any, project: Any, joined: dict[str, Any]
) -> None:
    from swarm.observations import observation_record
    from swarm.probe_schedule import ProbeOutcome

    node = Node.objects.get()
    serving = {node.node_id: ProbeOutcome("serving", ("ffn.0.0",), "", timezone.now().timestamp())}
    observation_record(
        project_id=project.pk,
        announced={node.node_id: {"ffn.0.0"}},
        error="",
        now=timezone.now(),
        probes=serving,
    )
    text = client.get(f"/projects/{project.slug}/swarm/").content.decode()
    assert "1/16" in text and node.short_id in text and "DHT observed" in text
    assert "1 / 1 / 1" in text and "Serving" in text  # nodes serving / reachable / announced


def test_health_page_is_for_staff_and_can_ban_and_approve(
    logged_in: Any, staff: Any, volunteer: Any, joined: dict[str, Any], project: Any
) -> None:
    assert logged_in(volunteer).get("/swarm/health/").status_code == 403
    admin = logged_in(staff)
    page = admin.get("/swarm/health/")
    node = Node.objects.get()
    assert page.status_code == 200 and node.short_id in page.content.decode()
    assert logged_in(volunteer).post(f"/swarm/nodes/{node.pk}/ban/").status_code == 403
    response = admin.post(f"/swarm/nodes/{node.pk}/ban/", {"next": "/swarm/health/"})
    assert response.status_code == 302 and response["Location"] == "/swarm/health/"
    node.refresh_from_db()
    assert node.state == NodeState.BANNED and not node.credentials.filter(revoked_at__isnull=True).exists()
    Node.objects.filter(pk=node.pk).update(state=NodeState.PENDING)
    admin.post(f"/swarm/nodes/{node.pk}/approve/")
    assert Node.objects.get(pk=node.pk).state == NodeState.REGISTERED


def test_openapi_documents_every_route(client: Any) -> None:
    schema = client.get("/api/v1/openapi.json").json()
    assert schema["openapi"].startswith("3.")
    for path in schema["paths"]:
        assert resolve(path.replace("{slug}", "demo")).func is not None
    docs = client.get("/api/docs/").content.decode()
    assert "/api/v1/agent/heartbeat" in docs


def test_read_only_swarm_api(client: Any, project: Any, joined: dict[str, Any]) -> None:
    state = client.get(f"/api/v1/projects/{project.slug}/swarm").json()
    assert state["coverage"]["total"] == 16 and len(state["nodes"]) == 1 and "observation_age_s" in state
    assert state["coverage"]["holes"] == 16 and len(state["coverage"]["hole_uids"]) == 16
    assert client.get(f"/api/v1/projects/{project.slug}/nodes").json()["nodes"][0]["state"] == "registered"


def test_heartbeats_roll_up_into_contribution_buckets(joined: dict[str, Any]) -> None:
    node = Node.objects.get()
    now = timezone.now()
    for i, samples in enumerate([100, 250, 40]):  # the third is after an agent restart
        HeartbeatSample.objects.create(
            node=node, received_at=now + timezone.timedelta(seconds=i), requests=samples, samples=samples,
            failures=0, bytes_in=0, bytes_out=0, samples_per_s=1.0, uptime_s=1.0,
        )  # fmt: skip
    assert contributions_roll_up(now=now) == 3
    assert sum(ContributionBucket.objects.values_list("samples", flat=True)) == 100 + 150 + 40
    assert contributions_roll_up(now=now) == 0
    assert counter_delta(None, 5) == 5 and counter_delta(10, 3) == 3
    pruned = raw_prune(now=now + timezone.timedelta(days=30))
    assert pruned["heartbeats"] == 3 and not HeartbeatSample.objects.exists()

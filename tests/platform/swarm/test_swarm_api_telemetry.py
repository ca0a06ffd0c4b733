"""Heartbeats and metrics: accepted ones are stored; stale, forged, replayed, oversized, banned and flooding
ones are refused with a clear 4xx and leave nothing behind."""

from __future__ import annotations

import secrets
import time
from typing import Any

import pytest
from django.utils import timezone

from core.events import project_swarm_group
from node_agent.identity import Identity
from node_agent.portal.tokens import issue_credential
from swarm.keys import portal_identity
from swarm.models import HeartbeatSample, Node, NodeState, SeenNonce, TrainingMetric

pytestmark = pytest.mark.django_db
HEARTBEAT = "/api/v1/agent/heartbeat"


def stored() -> tuple[int, int, int]:
    return HeartbeatSample.objects.count(), SeenNonce.objects.count(), TrainingMetric.objects.count()


@pytest.fixture
def heartbeat_body(make_heartbeat: Any) -> Any:
    return make_heartbeat


@pytest.fixture
def credential(joined: dict[str, Any]) -> str:
    return joined["credential"]


def assert_refused(response: Any, status: int, code: str, before: tuple[int, int, int]) -> None:
    assert response.status_code == status, response.content
    assert response.json()["error"] == code and response.json()["detail"]
    assert stored() == before


def test_a_heartbeat_is_stored_and_brings_the_node_online(
    heartbeat_body: Any, signed_post: Any, node_key: Identity, credential: str
) -> None:
    response = signed_post(HEARTBEAT, node_key, heartbeat_body(node_key, credential))
    assert response.status_code == 202 and response.json()["status"] == "ok"
    assert response.json()["next_heartbeat_s"] > 0
    node = Node.objects.get(public_key=node_key.public_key_bytes.hex())
    assert node.state == NodeState.ONLINE and node.experts == ["ffn.0.0", "ffn.0.1"] and node.samples == 640
    assert node.state_changes.filter(state=NodeState.ONLINE).exists()
    assert HeartbeatSample.objects.filter(node=node).count() == 1


def test_a_stale_heartbeat_is_refused(
    heartbeat_body: Any, signed_post: Any, node_key: Identity, credential: str
) -> None:
    before = stored()
    response = signed_post(HEARTBEAT, node_key, heartbeat_body(node_key, credential), now=time.time() - 600)
    assert_refused(response, 401, "stale", before)


def test_a_replayed_heartbeat_is_refused(
    heartbeat_body: Any, signed_post: Any, node_key: Identity, credential: str
) -> None:
    nonce = secrets.token_hex(16)
    now = time.time()
    assert (
        signed_post(
            HEARTBEAT, node_key, heartbeat_body(node_key, credential), now=now, nonce=nonce
        ).status_code
        == 202
    )
    before = stored()
    again = signed_post(HEARTBEAT, node_key, heartbeat_body(node_key, credential), now=now, nonce=nonce)
    assert_refused(again, 409, "replayed", before)


def test_a_heartbeat_signed_by_another_key_is_refused(
    heartbeat_body: Any, signed_post: Any, node_key: Identity, credential: str
) -> None:
    before = stored()
    thief = Identity.generate()
    response = signed_post(HEARTBEAT, thief, heartbeat_body(node_key, credential))
    assert_refused(response, 401, "credential_wrong_node", before)
    # A body whose signature header does not match its bytes is forged too.
    tampered = signed_post(
        HEARTBEAT, node_key, heartbeat_body(node_key, credential),
        raw=heartbeat_body(node_key, credential, samples=10**9).__repr__().encode(),
    )  # fmt: skip
    assert_refused(tampered, 401, "bad_signature", before)


def test_a_forged_credential_is_refused(
    heartbeat_body: Any, signed_post: Any, node_key: Identity, credential: str, project: Any
) -> None:
    forger = Identity.generate()
    forged = issue_credential(
        forger, cid="f" * 32, project=project.slug, user=1, node_public_key=node_key.public_key_bytes,
        now=time.time(), ttl=3600,
    )  # fmt: skip
    before = stored()
    response = signed_post(HEARTBEAT, node_key, heartbeat_body(node_key, forged))
    assert_refused(response, 401, "credential_bad_signature", before)


def test_a_credential_for_another_project_is_refused(
    heartbeat_body: Any,
    signed_post: Any,
    node_key: Identity,
    credential: str,
    make_project: Any,
    joined: dict[str, Any],
) -> None:
    from node_agent.portal.tokens import peek_credential

    other = make_project(title="Elsewhere")
    real = peek_credential(credential)
    # Signed by the portal, but naming another project than the node's: a credential mix-up or a bug.
    crossed = issue_credential(
        portal_identity(), cid=real.cid, project=other.slug, user=real.user,
        node_public_key=node_key.public_key_bytes, now=time.time(), ttl=3600,
    )  # fmt: skip
    before = stored()
    response = signed_post(HEARTBEAT, node_key, heartbeat_body(node_key, crossed))
    assert_refused(response, 403, "credential_wrong_project", before)


def test_a_banned_node_is_refused(
    heartbeat_body: Any, signed_post: Any, node_key: Identity, credential: str, researcher: Any
) -> None:
    from swarm import services

    node = Node.objects.get(public_key=node_key.public_key_bytes.hex())
    services.node_ban(node=node, actor=researcher, reason="misbehaving", now=timezone.now())
    before = stored()
    response = signed_post(HEARTBEAT, node_key, heartbeat_body(node_key, credential))
    assert response.status_code == 403 and response.json()["error"] in {"banned", "credential_revoked"}
    assert stored() == before
    assert Node.objects.get(pk=node.pk).last_heartbeat_at is None


def test_an_oversized_body_is_refused(
    heartbeat_body: Any, signed_post: Any, node_key: Identity, credential: str
) -> None:
    before = stored()
    huge = heartbeat_body(node_key, credential, platform="x" * 20_000)
    assert_refused(signed_post(HEARTBEAT, node_key, huge), 413, "too_large", before)


def test_an_invalid_heartbeat_is_refused(
    heartbeat_body: Any, signed_post: Any, node_key: Identity, credential: str
) -> None:
    before = stored()
    response = signed_post(HEARTBEAT, node_key, heartbeat_body(node_key, credential, samples=-5))
    assert_refused(response, 400, "invalid", before)
    response = signed_post(HEARTBEAT, node_key, heartbeat_body(node_key, credential, extra="field"))
    assert_refused(response, 400, "invalid", before)


def test_a_flood_of_heartbeats_is_rate_limited(
    heartbeat_body: Any, signed_post: Any, node_key: Identity, credential: str, settings: Any
) -> None:
    statuses = [signed_post(HEARTBEAT, node_key, heartbeat_body(node_key, credential)) for _ in range(12)]
    accepted = [r for r in statuses if r.status_code == 202]
    limited = [r for r in statuses if r.status_code == 429]
    assert len(accepted) == settings.SWARM["HEARTBEAT_BURST"] and len(limited) == 12 - len(accepted)
    assert int(limited[0]["Retry-After"]) >= 1 and limited[0].json()["error"] == "rate_limited"
    assert HeartbeatSample.objects.count() == len(accepted)


def test_training_metrics_are_stored(signed_post: Any, node_key: Identity, credential: str) -> None:
    points = [
        {"step": s, "loss": 2.0 / (s + 1), "accuracy": 0.1 * s, "samples_per_s": 100.0, "experts_answered": 8,
         "experts_failed": 0, "timestamp": time.time()}
        for s in range(1, 6)
    ]  # fmt: skip
    body = {"credential": credential, "node_id": node_key.node_id.hex(), "metrics": points}
    response = signed_post("/api/v1/agent/metrics", node_key, body)
    assert response.status_code == 202 and response.json()["stored"] == 5
    assert list(TrainingMetric.objects.values_list("step", flat=True)) == [1, 2, 3, 4, 5]
    before = stored()
    bad = {**body, "metrics": [{**points[0], "accuracy": 7.0}]}
    assert_refused(signed_post("/api/v1/agent/metrics", node_key, bad), 400, "invalid", before)
    too_many = {**body, "metrics": [{**points[0], "step": s} for s in range(101)]}
    assert_refused(signed_post("/api/v1/agent/metrics", node_key, too_many), 400, "invalid", before)


def test_each_trainer_run_keeps_its_own_monotonic_steps(
    signed_post: Any,
    node_key: Identity,
    credential: str,
    project: Any,
    client: Any,
    listen: Any,
    django_capture_on_commit_callbacks: Any,
) -> None:
    def post(run: str, *steps: int, kind: str = "train") -> Any:
        points = [
            {"step": s, "loss": 1.0, "accuracy": 0.5, "samples_per_s": 10.0, "experts_answered": 1,
             "experts_failed": 0, "timestamp": time.time(), "kind": kind, "run": run}
            for s in steps
        ]  # fmt: skip
        body = {"credential": credential, "node_id": node_key.node_id.hex(), "metrics": points}
        return signed_post("/api/v1/agent/metrics", node_key, body)

    events = listen(project_swarm_group(project.slug))
    with django_capture_on_commit_callbacks(execute=True):
        assert post("first", 10, 20).json()["stored"] == 2
    event = events()
    assert event["type"] == "swarm.metrics_received" and [p["run"] for p in event["points"]] == ["first"] * 2
    assert post("first", 20, 15).json()["stored"] == 0, "a resent or older step of the run is skipped"
    assert post("first", 20, kind="eval").json()["stored"] == 1, "eval points count steps of their own"
    assert post("second", 10, 20).json()["stored"] == 2, "a restarted trainer is a new run from step 10"
    assert post("", 5).json()["stored"] == 1, "agents that send no run id keep working"
    runs = list(TrainingMetric.objects.filter(kind="train").values_list("run", "step"))
    assert runs == [("first", 10), ("first", 20), ("second", 10), ("second", 20), ("", 5)]
    assert post("no/slashes", 30).status_code == 400 and post("x" * 33, 30).status_code == 400
    state = client.get(f"/api/v1/projects/{project.slug}/swarm").json()
    assert {m["run"] for m in state["metrics"]} == {"first", "second", ""}
    page = client.get(f"/projects/{project.slug}/swarm/").content.decode()
    assert page.count('class="line-loss" data-run-line') == 2, "a line per run (the lone point draws none)"
    assert "2 trainer runs" not in page and "3 trainer runs" in page


def test_get_is_not_allowed_on_agent_endpoints(client: Any) -> None:
    assert client.get(HEARTBEAT).status_code == 405


def test_points_with_one_timestamp_stay_in_arrival_order_on_the_charts(
    signed_post: Any, node_key: Identity, credential: str, project: Any, client: Any
) -> None:
    """Two points of one run stored with the same timestamp (a body built within one microsecond) still draw
    one line, not two lone points: ties keep the order they arrived in."""
    moment = time.time()
    points = [
        {"step": s, "loss": 1.0 / s, "accuracy": 0.5, "samples_per_s": 10.0, "experts_answered": 1,
         "experts_failed": 0, "timestamp": moment, "run": "tied"}
        for s in (10, 20, 30)
    ]  # fmt: skip
    body = {"credential": credential, "node_id": node_key.node_id.hex(), "metrics": points}
    assert signed_post("/api/v1/agent/metrics", node_key, body).json()["stored"] == 3
    page = client.get(f"/projects/{project.slug}/swarm/").content.decode()
    assert page.count('class="line-loss" data-run-line') == 1 and "1 trainer run," in page

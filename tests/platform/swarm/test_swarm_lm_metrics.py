"""A language model's metrics: bits per byte is stored, charted and streamed; hostile values get a 400."""

from __future__ import annotations

import json
import secrets
import time
from typing import Any

import pytest
from django.test import Client

from core.events import project_swarm_group
from node_agent.identity import Identity
from node_agent.portal.signed_body import sign_raw_body
from projects.models import Project
from swarm.models import TrainingMetric

pytestmark = pytest.mark.django_db
METRICS = "/api/v1/agent/metrics"


@pytest.fixture
def project(make_project: Any) -> Project:
    """The project the swarm fixtures join: a small language model."""
    return make_project(
        title="Byte LM", task="lm", lm_blocks=2, lm_seq_len=64, lm_window=32, lm_heads=4, grid_shape="2x2"
    )


def point(step: int, kind: str = "train", **changes: Any) -> dict[str, Any]:
    return {"step": step, "loss": 2.0 / step, "accuracy": 0.3, "samples_per_s": 50.0, "experts_answered": 4,
            "experts_failed": 0, "timestamp": time.time() + step / 1000, "kind": kind, "run": "r1",
            **changes}  # fmt: skip


def post(signed_post: Any, key: Identity, credential: str, points: list[dict[str, Any]]) -> Any:
    body = {"credential": credential, "node_id": key.node_id.hex(), "metrics": points}
    return signed_post(METRICS, key, body)


def test_bits_per_byte_is_stored_charted_and_streamed(
    signed_post: Any, node_key: Identity, joined: dict[str, Any], project: Project, client: Client,
    listen: Any, django_capture_on_commit_callbacks: Any,
) -> None:  # fmt: skip
    credential = joined["credential"]
    events = listen(project_swarm_group(project.slug))
    train = [point(s, bits_per_byte=8.0 - s / 10) for s in range(1, 6)]
    with django_capture_on_commit_callbacks(execute=True):
        response = post(signed_post, node_key, credential, [*train, point(5, "eval", bits_per_byte=6.5)])
    assert response.status_code == 202 and response.json()["stored"] == 6
    event = events()
    assert [(p["kind"], p["bits_per_byte"]) for p in event["points"]][-2:] == [("train", 7.5), ("eval", 6.5)]
    assert post(signed_post, node_key, credential, [point(6)]).json()["stored"] == 1, (
        "bits per byte is optional"
    )
    stored = list(TrainingMetric.objects.order_by("kind", "step").values_list("kind", "bits_per_byte"))
    assert stored[0] == ("eval", 6.5) and stored[-1] == ("train", None)

    page = client.get(f"/projects/{project.slug}/swarm/").content.decode()
    assert page.count('class="line-bpb-train"') == 1 and "training accuracy" not in page
    assert "validation 6.500 at step 5" in page and 'data-part="chart-bpb"' in page
    assert 'data-task="lm"' in page and 'data-part="chart-accuracy"' not in page
    state = client.get(f"/api/v1/projects/{project.slug}/swarm").json()
    assert [m["bits_per_byte"] for m in state["metrics"]] == [7.9, 7.8, 7.7, 7.6, 7.5, None]


@pytest.mark.parametrize("value", [-0.5, 64.5, 1e308, "3.0", True, [1.0], {"bpb": 1}, -1e-9], ids=repr)
def test_hostile_bits_per_byte_is_refused(
    signed_post: Any, node_key: Identity, joined: dict[str, Any], value: Any
) -> None:
    response = post(signed_post, node_key, joined["credential"], [point(1, bits_per_byte=value)])
    assert response.status_code == 400 and response.json()["error"] == "invalid"
    assert "bits_per_byte" in response.json()["detail"] and not TrainingMetric.objects.exists()


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_bits_per_byte_is_refused(
    node_key: Identity, joined: dict[str, Any], constant: str
) -> None:
    """JSON has no NaN; Python's encoder writes it anyway, so a hostile agent may send it (signed)."""
    body = {"credential": joined["credential"], "node_id": node_key.node_id.hex(), "metrics": [point(1)],
            "ts": time.time(), "nonce": secrets.token_hex(16)}  # fmt: skip
    raw = json.dumps(body).replace('"run": "r1"', f'"run": "r1", "bits_per_byte": {constant}').encode()
    assert constant.encode() in raw
    headers = {f"HTTP_{k.upper().replace('-', '_')}": v for k, v in sign_raw_body(node_key, raw).items()}
    del headers["HTTP_CONTENT_TYPE"]
    response = Client().post(METRICS, data=raw, content_type="application/json", **headers)
    assert response.status_code == 400 and response.json()["detail"]
    assert not TrainingMetric.objects.exists()

"""Hostile bodies on every agent endpoint, through the real views and database: each is a clear 400 (or
429), never a 500, and leaves nothing behind. Run on SQLite and on PostgreSQL (DATABASE_URL)."""

from __future__ import annotations

import json
import secrets
import time
from typing import Any

import pytest
from django.test import Client

from node_agent.identity import Identity
from node_agent.portal.schemas import MAX_COUNTER
from node_agent.portal.signed_body import sign_raw_body
from swarm.models import HeartbeatSample, Node, SeenNonce, TrainingMetric

pytestmark = pytest.mark.django_db
AGENT_ENDPOINTS = [
    "/api/v1/agent/join",
    "/api/v1/agent/renew",
    "/api/v1/agent/heartbeat",
    "/api/v1/agent/metrics",
]


def post_raw(path: str, identity: Identity, raw: bytes, address: str = "127.0.0.1") -> Any:
    """POST exactly `raw`, correctly signed by `identity` (the signature is not what is under test)."""
    headers = sign_raw_body(identity, raw)
    extra = {f"HTTP_{k.upper().replace('-', '_')}": v for k, v in headers.items() if k != "Content-Type"}
    return Client().post(path, data=raw, content_type="application/json", REMOTE_ADDR=address, **extra)


def stored() -> tuple[int, int, int]:
    return HeartbeatSample.objects.count(), SeenNonce.objects.count(), TrainingMetric.objects.count()


def with_raw(body: dict[str, Any], **raw_values: str) -> bytes:
    """`body` as a fresh signed-body JSON text, with each `raw_values` field spelled exactly as given."""
    text = json.dumps(body | {name: f"@{name}@" for name in raw_values})
    for name, raw in raw_values.items():
        text = text.replace(f'"@{name}@"', raw)
    return fresh("," + text[1:-1])


def assert_400(response: Any, code: str) -> None:
    assert response.status_code == 400, response.content
    assert response["Content-Type"] == "application/json"
    assert response.json()["error"] == code and response.json()["detail"]


def fresh(fields: str = "") -> bytes:
    """A body with a valid ts and nonce followed by raw JSON `fields` (so any bytes can be sent)."""
    return f'{{"ts":{time.time()},"nonce":"{secrets.token_hex(16)}"{fields}}}'.encode()


@pytest.mark.parametrize("path", AGENT_ENDPOINTS)
def test_deeply_nested_json_is_a_400(path: str, node_key: Identity) -> None:
    assert_400(post_raw(path, node_key, b"[" * 8000), "malformed")
    assert_400(post_raw(path, node_key, b"[" * 8000 + b"]" * 8000), "malformed")
    assert_400(post_raw(path, node_key, fresh(',"x":' + "[" * 5000 + "]" * 5000)), "malformed")
    assert_400(post_raw(path, node_key, fresh(',"x":' + '{"a":' * 2000 + "1" + "}" * 2000)), "malformed")


@pytest.mark.parametrize("path", AGENT_ENDPOINTS)
def test_a_ts_beyond_the_float_range_is_a_400(path: str, node_key: Identity) -> None:
    nonce = secrets.token_hex(16)
    assert_400(post_raw(path, node_key, f'{{"ts":1{"0" * 400},"nonce":"{nonce}"}}'.encode()), "malformed")
    assert_400(post_raw(path, node_key, f'{{"ts":-1{"0" * 400},"nonce":"{nonce}"}}'.encode()), "malformed")
    assert_400(post_raw(path, node_key, f'{{"ts":1e400,"nonce":"{nonce}"}}'.encode()), "malformed")
    assert_400(post_raw(path, node_key, f'{{"ts":1{"0" * 5000},"nonce":"{nonce}"}}'.encode()), "malformed")


@pytest.mark.parametrize("counter", ["requests", "samples", "failures", "bytes_in", "bytes_out"])
def test_heartbeat_counters_beyond_the_database_column_are_a_400(
    counter: str, node_key: Identity, joined: dict[str, Any], make_heartbeat: Any
) -> None:
    before = stored()
    body = make_heartbeat(node_key, joined["credential"])
    for value in (MAX_COUNTER + 1, 2**64, 10**400, -1):
        response = post_raw("/api/v1/agent/heartbeat", node_key, with_raw(body, **{counter: str(value)}))
        assert_400(response, "invalid")
    peers = make_heartbeat(node_key, joined["credential"], peers=[{"node_id": "ab" * 20, "requests": 2**63}])
    assert_400(post_raw("/api/v1/agent/heartbeat", node_key, with_raw(peers)), "invalid")
    assert stored() == before


def test_the_largest_counter_is_stored(
    node_key: Identity, joined: dict[str, Any], make_heartbeat: Any, signed_post: Any
) -> None:
    body = make_heartbeat(node_key, joined["credential"], samples=MAX_COUNTER, bytes_out=MAX_COUNTER)
    assert signed_post("/api/v1/agent/heartbeat", node_key, body).status_code == 202
    node = Node.objects.get()
    assert node.samples == MAX_COUNTER and HeartbeatSample.objects.get().bytes_out == MAX_COUNTER


def metric(**changes: Any) -> dict[str, Any]:
    point = {"step": 1, "loss": 0.5, "accuracy": 0.9, "samples_per_s": 10.0, "experts_answered": 4,
             "experts_failed": 0, "timestamp": time.time()}  # fmt: skip
    return point | changes


@pytest.mark.parametrize(
    "point",
    [
        metric(step=2**31),
        metric(step=2**63),
        metric(experts_answered=2**31),
        metric(experts_failed=10**30),
        metric(loss=10**400),
        metric(timestamp=10**400),
    ],
)
def test_metrics_numbers_beyond_their_columns_are_a_400(
    point: dict[str, Any], node_key: Identity, joined: dict[str, Any]
) -> None:
    before = stored()
    body = {"credential": joined["credential"], "node_id": node_key.node_id.hex(), "metrics": [point]}
    assert_400(post_raw("/api/v1/agent/metrics", node_key, with_raw(body)), "invalid")
    assert stored() == before


@pytest.mark.parametrize(
    "changes",
    [
        {"platform": "Linux\x00x86"},
        {"agent_version": "0.1\x00"},
        {"platform": "\ud800"},
        {"role": "\ud800"},
        {"experts": ["ffn.0.0\x00"]},
        {"endpoint": "127.0.0.1\x00:4000"},
        {"endpoint": "127.0.0.1:4000\n"},
    ],
)
def test_text_the_database_cannot_hold_is_a_400(
    changes: dict[str, Any], node_key: Identity, joined: dict[str, Any], make_heartbeat: Any
) -> None:
    before = stored()
    body = make_heartbeat(node_key, joined["credential"], **changes)
    assert_400(post_raw("/api/v1/agent/heartbeat", node_key, with_raw(body)), "invalid")
    assert stored() == before


def test_a_join_with_a_nul_in_its_platform_is_a_400(node_key: Identity, project: Any, join_code: Any) -> None:
    body = {"code": join_code(project), "agent_version": "0.1.0", "platform": "Linux\x00"}
    assert_400(post_raw("/api/v1/agent/join", node_key, with_raw(body)), "invalid")
    assert not Node.objects.exists()


def test_agent_endpoints_are_rate_limited_per_address(node_key: Identity, settings: Any) -> None:
    settings.SWARM = {**settings.SWARM, "RATE_AGENT_PER_IP": 5}
    answers = [post_raw("/api/v1/agent/heartbeat", node_key, b"{}", address="203.0.113.7") for _ in range(6)]
    assert [a.status_code for a in answers] == [400] * 5 + [429]
    assert answers[-1].json()["error"] == "rate_limited" and 1 <= int(answers[-1]["Retry-After"]) <= 60
    # Another address still gets through.
    assert post_raw("/api/v1/agent/heartbeat", node_key, b"{}", address="203.0.113.8").status_code == 400


def test_joins_are_rate_limited_per_address_and_per_key(
    project: Any, join_code: Any, settings: Any, signed_post: Any
) -> None:
    settings.SWARM = {**settings.SWARM, "RATE_JOIN_PER_IP": 4, "RATE_JOIN_PER_KEY": 2}
    key = Identity.generate()
    body = {"code": "no-such-code", "agent_version": "0.1.0", "platform": "Linux"}
    answers = [signed_post("/api/v1/agent/join", key, body).status_code for _ in range(3)]
    assert answers == [400, 400, 429]  # the third from this key
    others = [signed_post("/api/v1/agent/join", Identity.generate(), body).status_code for _ in range(2)]
    assert others == [400, 429]  # this address used its 4 join attempts (3 + 1)
    assert not Node.objects.exists()


def test_renewals_are_rate_limited_per_key(
    node_key: Identity, joined: dict[str, Any], settings: Any, signed_post: Any
) -> None:
    settings.SWARM = {**settings.SWARM, "RATE_RENEW_PER_KEY": 2}
    answers = [
        signed_post("/api/v1/agent/renew", node_key, {"credential": joined["credential"]}) for _ in range(3)
    ]
    assert [a.status_code for a in answers] == [201, 201, 429] and answers[2]["Retry-After"]

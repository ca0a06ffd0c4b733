"""Pure tests of the shared portal formats: credentials, signed bodies, telemetry schemas, revocations."""

from __future__ import annotations

import base64
import json
import random

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from node_agent.backoff import Backoff
from node_agent.identity import Identity
from node_agent.portal.census import choose_cells, grid_uids
from node_agent.portal.errors import CredentialError, PayloadError, SignedBodyError
from node_agent.portal.outbox import Outbox
from node_agent.portal.project_config import parse_project_config
from node_agent.portal.revocations import parse_revocation_list, revocation_list_value, revocations_key
from node_agent.portal.schemas import (
    MAX_METRICS_PER_BODY,
    Heartbeat,
    HeartbeatBody,
    JoinBody,
    JoinRequest,
    MetricPoint,
    MetricsBody,
    MetricsReport,
    PeerActivity,
    RenewBody,
    RenewRequest,
    validate_heartbeat,
    validate_join,
    validate_metrics,
)
from node_agent.portal.signed_body import NODE_HEADER, SIGNATURE_HEADER, sign_body, verify_body
from node_agent.portal.tokens import issue_credential, peek_credential, verify_credential

PORTAL = Identity.generate()
NODE = Identity.generate()
NOW = 1_700_000_000.0


def token(**overrides: object) -> str:
    options = dict(
        cid="c-1", project="demo", user=7, node_public_key=NODE.public_key_bytes, now=NOW, ttl=3600.0
    )
    options.update(overrides)
    identity = options.pop("identity", PORTAL)
    return issue_credential(identity, **options)  # type: ignore[arg-type]


def check(tok: str, **overrides: object):
    options = dict(portal_public_key=PORTAL.public_key_bytes, now=NOW + 10, project="demo")
    options.update(overrides)
    return verify_credential(tok, **options)  # type: ignore[arg-type]


def heartbeat_body(**overrides: object) -> dict:
    body = {
        "credential": token(),
        "node_id": NODE.node_id.hex(),
        "endpoint": "127.0.0.1:4000",
        "agent_version": "0.1.0",
        "platform": "Linux",
        "role": "server",
        "experts": ["ffn.0.0", "ffn.1.1"],
        "requests": 10,
        "samples": 640,
        "failures": 1,
        "bytes_in": 1000,
        "bytes_out": 2000,
        "samples_per_s": 12.5,
        "uptime_s": 30.0,
        "peers": [{"node_id": PORTAL.node_id.hex(), "requests": 3}],
        "ts": NOW,
        "nonce": "ab" * 16,
    }
    body.update(overrides)
    return body


# ---- credentials ----------------------------------------------------------------------------------------


def test_credential_round_trip_binds_project_user_node_and_expiry() -> None:
    credential = check(token(), node_public_key=NODE.public_key_bytes)
    assert (credential.cid, credential.project, credential.user) == ("c-1", "demo", 7)
    assert credential.node_public_key == NODE.public_key_bytes
    assert credential.node_id == NODE.node_id
    assert credential.expires_at == NOW + 3600.0
    assert peek_credential(credential.token) == credential


@pytest.mark.parametrize(
    ("tok", "overrides", "reason"),
    [
        (token(), {"now": NOW + 3601}, "expired"),
        (token(), {"project": "other"}, "wrong_project"),
        (token(), {"node_public_key": PORTAL.public_key_bytes}, "wrong_node"),
        (token(), {"revoked": frozenset({"c-1"})}, "revoked"),
        (token(identity=Identity.generate()), {}, "bad_signature"),
        (token(now=NOW + 10_000), {}, "malformed"),  # issued far in the future
        ("", {}, "malformed"),
        ("not base64 !!", {}, "malformed"),
        ("A" * 5000, {}, "malformed"),
    ],
)
def test_credential_refusals_name_their_reason(tok: str, overrides: dict, reason: str) -> None:
    with pytest.raises(CredentialError) as info:
        check(tok, **overrides)
    assert info.value.reason == reason


def test_tampered_credential_payload_is_a_bad_signature() -> None:
    outer = msgpack.unpackb(base64.urlsafe_b64decode(token() + "=" * 4), raw=False)
    payload = msgpack.unpackb(outer["p"], raw=False)
    payload["project"] = "other"  # a volunteer trying to reuse a credential in another project
    outer["p"] = msgpack.packb(payload, use_bin_type=True)
    forged = base64.urlsafe_b64encode(msgpack.packb(outer, use_bin_type=True)).decode().rstrip("=")
    with pytest.raises(CredentialError) as info:
        check(forged, project="other")
    assert info.value.reason == "bad_signature"


@settings(max_examples=200, deadline=None)
@given(
    st.one_of(
        st.text(max_size=300), st.binary(max_size=300).map(lambda b: base64.urlsafe_b64encode(b).decode())
    )
)
def test_garbage_tokens_only_ever_raise_credential_error(garbage: str) -> None:
    with pytest.raises(CredentialError):
        check(garbage)


# ---- signed bodies --------------------------------------------------------------------------------------


def test_signed_body_verifies_and_returns_signer_and_body() -> None:
    raw, headers = sign_body(NODE, {"credential": "x"}, NOW)
    lower = {key.lower(): value for key, value in headers.items()}  # header names are case-insensitive
    public_key, body = verify_body(raw, lower, now=NOW + 5)
    assert public_key == NODE.public_key_bytes
    assert body["credential"] == "x" and body["ts"] == NOW and len(body["nonce"]) == 32
    django_meta = {
        "HTTP_X_COLEARN_NODE": headers[NODE_HEADER],
        "HTTP_X_COLEARN_SIGNATURE": headers[SIGNATURE_HEADER],
    }
    assert verify_body(raw, django_meta, now=NOW)[0] == NODE.public_key_bytes


def test_signed_body_refusals() -> None:
    raw, headers = sign_body(NODE, {"credential": "x"}, NOW)
    cases = {
        "stale": lambda: verify_body(raw, headers, now=NOW + 61),
        "too_large": lambda: verify_body(raw + b" " * 20_000, headers, now=NOW),
        "bad_signature": lambda: verify_body(raw.replace(b'"x"', b'"y"'), headers, now=NOW),
        "malformed": lambda: verify_body(raw, {NODE_HEADER: headers[NODE_HEADER]}, now=NOW),
    }
    for reason, call in cases.items():
        with pytest.raises(SignedBodyError) as info:
            call()
        assert info.value.reason == reason, reason
    # Signed by another key but claiming ours: the signature does not match the claimed key.
    other_raw, other_headers = sign_body(PORTAL, {"credential": "x"}, NOW)
    with pytest.raises(SignedBodyError) as info:
        verify_body(other_raw, {**other_headers, NODE_HEADER: headers[NODE_HEADER]}, now=NOW)
    assert info.value.reason == "bad_signature"


def test_signed_body_without_nonce_or_with_nan_is_malformed() -> None:
    for raw in (b'{"ts": 1700000000.0}', b'{"ts": NaN, "nonce": "' + b"a" * 32 + b'"}', b"[1, 2]"):
        headers = {NODE_HEADER: NODE.public_key_bytes.hex(), SIGNATURE_HEADER: NODE.sign(b"x").hex()}
        headers[SIGNATURE_HEADER] = NODE.sign(b"colearn-signed-body-v1\x00" + raw).hex()
        with pytest.raises(SignedBodyError) as info:
            verify_body(raw, headers, now=NOW)
        assert info.value.reason == "malformed"


# ---- telemetry schemas ----------------------------------------------------------------------------------


def test_heartbeat_schema_accepts_a_full_body_and_names_bad_fields() -> None:
    assert validate_heartbeat(heartbeat_body()).experts == ["ffn.0.0", "ffn.1.1"]
    bad = {
        "requests": -1,
        "role": "miner",
        "node_id": "xyz",
        "endpoint": "no-port",
        "samples_per_s": "fast",
        "peers": [{"node_id": "00" * 20, "requests": 1, "extra": 1}],
    }
    for name, value in bad.items():
        with pytest.raises(PayloadError) as info:
            validate_heartbeat(heartbeat_body(**{name: value}))
        assert info.value.reason == "invalid"
    with pytest.raises(PayloadError, match="unknown field"):
        validate_heartbeat(heartbeat_body(surprise=1))
    with pytest.raises(PayloadError):
        validate_heartbeat({k: v for k, v in heartbeat_body().items() if k != "credential"})


def test_metrics_schema_bounds_batch_size_and_values() -> None:
    point = {
        "step": 10,
        "loss": 0.5,
        "accuracy": 0.9,
        "samples_per_s": 100.0,
        "experts_answered": 40,
        "experts_failed": 0,
        "timestamp": NOW,
    }
    body = {"credential": token(), "node_id": NODE.node_id.hex(), "ts": NOW, "nonce": "cd" * 16}
    assert validate_metrics({**body, "metrics": [point]}).metrics[0].kind == "train"
    with pytest.raises(PayloadError):
        validate_metrics({**body, "metrics": [point] * (MAX_METRICS_PER_BODY + 1)})
    with pytest.raises(PayloadError):
        validate_metrics({**body, "metrics": [{**point, "accuracy": 1.5}]})
    with pytest.raises(PayloadError):
        validate_metrics({**body, "metrics": []})
    with pytest.raises(PayloadError):
        validate_join({"code": "x", "agent_version": "1", "platform": "p", "ts": NOW, "nonce": "ab" * 8})


def test_a_signed_heartbeat_survives_the_json_round_trip() -> None:
    body = heartbeat_body()
    body.pop("ts"), body.pop("nonce")
    raw, headers = sign_body(NODE, body, NOW)
    _, received = verify_body(raw, headers, now=NOW)
    assert validate_heartbeat(received).requests == 10
    assert json.loads(raw)["role"] == "server"


def test_every_request_struct_is_its_body_struct_plus_the_signed_stamp() -> None:
    """One definition per format: what the agent builds and the portal decodes differ by ts/nonce only."""
    pairs = [(HeartbeatBody, Heartbeat), (MetricsBody, MetricsReport), (JoinBody, JoinRequest)]
    pairs.append((RenewBody, RenewRequest))
    for body, request in pairs:
        assert issubclass(request, body)
        assert set(request.__struct_fields__) == {*body.__struct_fields__, "ts", "nonce"}


def test_bodies_built_from_the_structs_pass_the_portal_checks() -> None:
    stats = {k: v for k, v in heartbeat_body().items() if k not in ("ts", "nonce", "peers")}
    heartbeat = HeartbeatBody(**stats, peers=[PeerActivity(node_id=PORTAL.node_id.hex(), requests=3)])
    raw, headers = sign_body(NODE, heartbeat, NOW)
    _, received = verify_body(raw, headers, now=NOW)
    decoded = validate_heartbeat(received)
    assert decoded.peers == heartbeat.peers and decoded.credential == heartbeat.credential
    point = MetricPoint(
        step=3, loss=0.5, accuracy=0.9, samples_per_s=1.0, experts_answered=2, experts_failed=0, timestamp=NOW
    )
    metrics = MetricsBody(credential=token(), node_id=NODE.node_id.hex(), metrics=[point])
    raw, headers = sign_body(NODE, metrics, NOW, nonce="cd" * 16)
    _, received = verify_body(raw, headers, now=NOW)
    assert validate_metrics(received).metrics == [point] and received["nonce"] == "cd" * 16
    raw, headers = sign_body(NODE, JoinBody(code="CODE-1", agent_version="1", platform="p"), NOW)
    assert validate_join(verify_body(raw, headers, now=NOW)[1]).code == "CODE-1"


# ---- revocation list and config -------------------------------------------------------------------------


def test_revocation_list_round_trip_and_limits() -> None:
    assert revocations_key("demo") == "revocations:demo"
    parsed = parse_revocation_list(revocation_list_value(["b", "a", "a"], NOW))
    assert parsed.revoked == frozenset({"a", "b"}) and parsed.published_at == NOW
    for bad in (
        {"v": 2, "revoked": [], "t": NOW},
        {"v": 1, "revoked": "a", "t": NOW},
        {"v": 1, "revoked": [1]},
    ):
        with pytest.raises(PayloadError):
            parse_revocation_list(bad)


def test_project_config_parses_and_ignores_unknown_fields() -> None:
    config = parse_project_config(
        {
            "project": "demo",
            "portal_public_key": PORTAL.public_key_bytes.hex(),
            "expert": {"class": "transformer", "hidden_dim": 64, "grid": [16, 16], "prefix": "ffn"},
            "approval_required": True,
        }
    )
    assert config.expert.expert_class == "transformer" and config.portal_key == PORTAL.public_key_bytes
    with pytest.raises(PayloadError):
        parse_project_config({"project": "demo", "portal_public_key": "zz", "expert": {}})


# ---- agent helpers (pure) -------------------------------------------------------------------------------


def test_backoff_grows_exponentially_with_bounded_jitter() -> None:
    backoff = Backoff(base=1.0, factor=2.0, maximum=30.0)
    assert [backoff.delay(n, 1.0) for n in range(1, 7)] == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0]
    assert backoff.delay(3, 0.0) == 2.0  # jitter keeps at least half of the cap
    assert backoff.delay(10_000, 0.5) == 22.5  # huge failure counts stay capped, no overflow


def test_outbox_drops_oldest_when_full_and_put_back_keeps_order() -> None:
    box: Outbox[int] = Outbox(3)
    for i in range(5):
        box.put(i)
    assert box.dropped == 2 and box.take(10) == [2, 3, 4]
    box.put(5)
    box.put_back([3, 4])
    assert box.take(10) == [3, 4, 5]


def test_choose_cells_prefers_the_least_covered_cells() -> None:
    assert grid_uids("ffn", [2, 3])[:4] == ["ffn.0.0", "ffn.0.1", "ffn.0.2", "ffn.1.0"]
    live = {uid: 2 for uid in grid_uids("ffn", [2, 2])}
    live["ffn.1.0"] = 0
    live["ffn.0.1"] = 1
    assert choose_cells([("ffn", [2, 2])], live, 2, random.Random(1)) == ["ffn.1.0", "ffn.0.1"]
    spread = {tuple(choose_cells([("ffn", [4, 4])], {}, 1, random.Random(seed))) for seed in range(20)}
    assert len(spread) > 5  # empty grid: volunteers joining together do not all pick the same cell

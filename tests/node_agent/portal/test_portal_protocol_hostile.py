"""The portal's body decoders under arbitrary input: only their documented errors, never another
exception, and whatever they accept fits the portal's database columns."""

from __future__ import annotations

import contextlib
import json
import time
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from node_agent.identity import Identity
from node_agent.portal.errors import PayloadError, SignedBodyError
from node_agent.portal.schemas import (
    MAX_COUNTER,
    MAX_SMALL_COUNT,
    validate_heartbeat,
    validate_join,
    validate_metrics,
    validate_renew,
)
from node_agent.portal.signed_body import json_loads_bounded, sign_raw_body, verify_body

IDENTITY = Identity.generate()
NOW = time.time()

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.sampled_from([2**63 - 1, 2**63, 2**64, -(2**63) - 1, 2**31, 10**400])
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
    | st.sampled_from(["a\x00b", "\ud800", "x\n", "127.0.0.1:1"])
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=6),
    max_leaves=30,
)
FIELDS = [
    *("credential", "node_id", "endpoint", "agent_version", "platform", "role", "experts", "requests"),
    *("samples", "failures", "bytes_in", "bytes_out", "samples_per_s", "uptime_s", "peers", "ts", "nonce"),
    *("code", "metrics", "step", "loss", "accuracy", "experts_answered", "experts_failed", "timestamp"),
]
bodies = st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=8), json_values, max_size=20)


def sign(raw: bytes) -> dict[str, str]:
    return sign_raw_body(IDENTITY, raw)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=512) | json_values.map(lambda v: json.dumps(v).encode()))
def test_verify_body_raises_only_signed_body_errors(raw: bytes) -> None:
    with contextlib.suppress(SignedBodyError):
        verify_body(raw, sign(raw), now=NOW)


@settings(max_examples=50, deadline=None)
@given(st.integers(min_value=17, max_value=12000), st.sampled_from(["[", '{"a":']))
def test_nesting_beyond_the_limit_is_refused_before_parsing(depth: int, opener: str) -> None:
    raw = (opener * depth).encode()[:16384]
    with pytest.raises(SignedBodyError) as refused:
        verify_body(raw, sign(raw), now=NOW)
    assert refused.value.reason == "malformed"


@pytest.mark.parametrize("ts", ["1" + "0" * 400, "-1" + "0" * 400, "1e400", "1" + "0" * 5000])
def test_a_ts_beyond_the_float_range_is_malformed(ts: str) -> None:
    raw = f'{{"ts":{ts},"nonce":"{"ab" * 16}"}}'.encode()
    with pytest.raises(SignedBodyError) as refused:
        verify_body(raw, sign(raw), now=NOW)
    assert refused.value.reason == "malformed"


def test_strings_do_not_count_as_nesting() -> None:
    text = json.dumps({"a": "[" * 5000, "b": '\\"{{{'})
    assert json_loads_bounded(text) == {"a": "[" * 5000, "b": '\\"{{{'}


def _fits_columns(value: Any) -> None:
    """Every integer a validated body carries fits a 64-bit column; text has no NUL or lone surrogate."""
    if isinstance(value, bool) or value is None:
        return
    if isinstance(value, int):
        assert 0 <= value <= MAX_COUNTER
    elif isinstance(value, str):
        assert "\x00" not in value and not any(0xD800 <= ord(c) <= 0xDFFF for c in value)
    elif isinstance(value, list | tuple):
        for item in value:
            _fits_columns(item)
    elif hasattr(value, "__struct_fields__"):
        for name in value.__struct_fields__:
            if name in ("credential", "code"):
                continue  # never stored as such (hashed or parsed further)
            _fits_columns(getattr(value, name))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bodies)
def test_validators_raise_only_payload_errors_and_accept_only_storable_values(body: dict[str, Any]) -> None:
    for validate in (validate_heartbeat, validate_metrics, validate_join, validate_renew):
        try:
            value = validate(body)
        except PayloadError:
            continue
        _fits_columns(value)
        for point in getattr(value, "metrics", ()):
            assert max(point.step, point.experts_answered, point.experts_failed) <= MAX_SMALL_COUNT


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.fixed_dictionaries(
        {
            "requests": st.integers(min_value=-(2**70), max_value=2**70),
            "platform": st.text(max_size=140),
            "experts": st.lists(st.text(max_size=10), max_size=3),
        }
    )
)
def test_an_almost_valid_heartbeat_is_accepted_only_when_storable(changes: dict[str, Any]) -> None:
    body = {
        "credential": "x", "node_id": "ab" * 20, "endpoint": "127.0.0.1:4000", "agent_version": "0.1",
        "platform": "Linux", "role": "server", "experts": [], "requests": 0, "samples": 0, "failures": 0,
        "bytes_in": 0, "bytes_out": 0, "samples_per_s": 0.0, "uptime_s": 0.0, "peers": [], "ts": NOW,
        "nonce": "ab" * 16,
    } | changes  # fmt: skip
    try:
        heartbeat = validate_heartbeat(body)
    except PayloadError:
        return
    _fits_columns(heartbeat)

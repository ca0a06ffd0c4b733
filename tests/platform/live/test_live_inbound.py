"""live.inbound: portal events become browser diffs; malformed ones are refused with a reason."""

from __future__ import annotations

import pytest

from live.inbound import InboundError, change_time, owner_key, to_diffs

T0 = 1767225600.0  # 2026-01-01T00:00:00Z
NODE = {
    "node_id": "ab" * 20,
    "state": "online",
    "state_label": "Online",
    "state_changed": T0,
    "role": "server",
    "experts": ["ffn.0.1"],
    "announced": [],
    "reach": "",
    "probed_at": None,
    "probe_reason": "",
    "serving": [],
    "agent_version": "0.1.0",
    "samples": 10,
    "requests": 2,
    "samples_per_s": 12.5,
    "last_heartbeat": T0 + 9,
}


def test_node_changed_becomes_an_upsert_dated_by_its_heartbeat() -> None:
    [diff] = to_diffs({"type": "swarm.node_changed", "project": "p", "node": NODE}, received_at=T0 + 9.2)
    assert diff["type"] == "node.upsert"
    assert diff["at"] == T0 + 9
    node = diff["node"]
    assert (node["label"], node["state"], node["samples_per_s"]) == ("abababab", "online", 12.5)
    assert node["last_heartbeat"] == T0 + 9 and node["experts"] == ["ffn.0.1"]


def test_an_event_without_a_recent_change_time_is_dated_by_arrival() -> None:
    [diff] = to_diffs({"type": "swarm.node_changed", "node": NODE}, received_at=T0 + 600)
    assert diff["at"] == T0 + 600
    assert change_time(diff["node"], T0 + 600) == T0 + 600


def test_coverage_and_metrics() -> None:
    coverage_reading = {"cells": {"ffn.0.0": 2}, "observed_at": T0 + 5}
    [coverage] = to_diffs(
        {"type": "swarm.coverage_changed", "coverage": coverage_reading}, received_at=T0 + 6
    )
    assert coverage == {"type": "coverage.changed", "at": T0 + 5, "coverage": coverage_reading}
    point = {"t": T0 + 1, "step": 1, "loss": 2.0, "accuracy": 0.5, "node_id": "cd" * 20, "run": "r1"}
    [metrics] = to_diffs({"type": "swarm.metrics_received", "points": [point]}, received_at=T0)
    assert metrics["series"] == "training"
    assert metrics["points"] == [point]
    assert to_diffs({"type": "swarm.metrics_received", "points": []}, received_at=T0) == []
    lm_point = {**point, "kind": "eval", "bits_per_byte": 3.25}  # a language model's validation point
    [lm] = to_diffs({"type": "swarm.metrics_received", "points": [lm_point]}, received_at=T0)
    assert lm["points"] == [lm_point]


GOOD_POINT = {"t": T0, "step": 1, "loss": 1.0, "accuracy": 0.5, "node_id": "cd" * 20, "run": ""}
BAD_LM_FIELDS = [{"bits_per_byte": 65.0}, {"bits_per_byte": -1.0}, {"bits_per_byte": "4"}, {"kind": "test"}]


@pytest.mark.parametrize(
    "event",
    [
        {"type": "swarm.node_changed"},
        {"type": "swarm.node_changed", "node": {"state": "online"}},
        {"type": "swarm.node_changed", "node": {**NODE, "last_heartbeat": "yesterday"}},
        {"type": "swarm.node_changed", "node": {**NODE, "samples_per_s": float("nan")}},
        {"type": "swarm.node_changed", "node": {**NODE, "samples": "10"}},
        {"type": "swarm.node_changed", "node": {**NODE, "experts": ["x"] * 5000}},
        {"type": "swarm.node_changed", "node": {**NODE, "state_changed": 1e20}},
        {"type": "swarm.node_changed", "node": {**NODE, "probe_reason": "x" * 201}},
        {"type": "swarm.node_changed", "node": {**NODE, "serving": ["x"] * 5000}},
        {"type": "swarm.coverage_changed", "coverage": {"cells": [1, 2], "observed_at": None}},
        {"type": "swarm.coverage_changed", "coverage": {"cells": {"a": -1}, "observed_at": None}},
        {"type": "swarm.metrics_received", "points": [1]},
        {"type": "swarm.metrics_received", "points": [{"t": T0, "step": 1, "loss": float("inf")}]},
        {"type": "swarm.metrics_received", "points": [{}] * 1001},
        *({"type": "swarm.metrics_received", "points": [{**GOOD_POINT, **bad}]} for bad in BAD_LM_FIELDS),
        {"type": "swarm.unheard_of"},
    ],
)
def test_malformed_events_are_refused(event: dict) -> None:
    with pytest.raises(InboundError):
        to_diffs(event, received_at=T0)


def test_owner_keys_are_stable_opaque_and_per_user() -> None:
    assert owner_key("s", 1) == owner_key("s", 1)
    assert owner_key("s", 1) != owner_key("s", 2) != owner_key("t", 2)
    assert len(owner_key("s", 1)) == 16


ALERT = {
    "id": "17",
    "kind": "observer",
    "severity": "warning",
    "message": "The DHT could not be read: timeout",
    "node_id": None,
    "raised_at": T0 + 5,
}


def test_an_open_alert_becomes_alert_raised() -> None:
    event = {"type": "swarm.alert_changed", "project": "p", "alert": ALERT, "resolved_at": None}
    [diff] = to_diffs(event, received_at=T0 + 6)
    assert diff == {
        "type": "alert.raised",
        "at": T0 + 5,
        "alert": {
            "id": "17",
            "kind": "observer",
            "severity": "warning",
            "message": "The DHT could not be read: timeout",
            "node_id": None,
            "raised_at": T0 + 5,
        },
    }


def test_a_resolved_alert_becomes_alert_cleared() -> None:
    event = {"type": "swarm.alert_changed", "alert": ALERT, "resolved_at": T0 + 60}
    [diff] = to_diffs(event, received_at=T0 + 61)
    assert diff == {"type": "alert.cleared", "at": T0 + 60, "alert_id": "17"}


@pytest.mark.parametrize(
    "event",
    [
        {"type": "swarm.alert_changed"},
        {"type": "swarm.alert_changed", "alert": {"id": ""}},
        {"type": "swarm.alert_changed", "alert": {"id": 17}},
        {"type": "swarm.alert_changed", "alert": ALERT, "resolved_at": "yesterday"},
        {"type": "swarm.alert_changed", "alert": {**ALERT, "raised_at": "2026-01-01T00:00:05+00:00"}},
        {"type": "swarm.alert_changed", "alert": {**ALERT, "message": "x" * 5000}},
        {"type": "swarm.alert_changed", "alert": ALERT, "resolved_at": float("nan")},
    ],
)
def test_malformed_alert_events_are_refused(event: dict) -> None:
    with pytest.raises(InboundError):
        to_diffs(event, received_at=T0)

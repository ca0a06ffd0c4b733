"""The `experts:` rules: withdrawals are as constrained as announcements; which refusals blame the sender."""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings

from node_agent.dht import DHTRecordRefused, DHTValidationError, owner_subkey
from node_agent.dht.api import ValueWithExpiration
from node_agent.dht.records import sign_record
from node_agent.dht.validation import ValidatorRegistry
from node_agent.identity import Identity
from node_agent.moe.announce import (
    MAX_ANNOUNCE_TTL,
    ExpertsValidator,
    announcement_value,
    live_children,
    prefix_key,
)
from node_agent.portal.gate import CredentialPolicy
from node_agent.portal.tokens import issue_credential
from tests.node_agent.msgpack_strategies import msgpack_values

PORTAL = Identity.generate()
SERVER = Identity.generate()
NOW = time.time()
ENDPOINT = "10.0.0.7:4000"


def registry(gated: bool = False) -> ValidatorRegistry:
    checks = ValidatorRegistry(16 * 1024, 24 * 3600)
    policy = CredentialPolicy("demo", PORTAL.public_key_bytes) if gated else None
    checks.register("experts:", ExpertsValidator(policy))
    return checks


def token(identity: Identity = SERVER) -> str:
    return issue_credential(
        PORTAL, cid="c1", project="demo", user=1, node_public_key=identity.public_key_bytes, now=NOW, ttl=600
    )


def withdrawal(value: object, *, ttl: float = 60.0, identity: Identity = SERVER):
    return sign_record(identity, prefix_key("ffn."), owner_subkey("3", identity.node_id), value, NOW + ttl)


def test_a_plain_withdrawal_is_accepted() -> None:
    view = registry().check(
        withdrawal(announcement_value(ENDPOINT, SERVER.node_id, NOW, withdrawn=True)), NOW
    )
    assert view.value["withdrawn"] is True and view.value_size < 100


@pytest.mark.parametrize(
    ("value", "ttl", "reason"),
    [
        ({**announcement_value(ENDPOINT, SERVER.node_id, NOW, True), "pad": "x" * 500}, 60, "map of"),
        (announcement_value(ENDPOINT, SERVER.node_id, NOW, True, credential="x" * 900), 60, "cred must be"),
        (announcement_value("[" + "f" * 70 + "]:1", SERVER.node_id, NOW, True), 60, "endpoint"),
        (announcement_value("no-port-here", SERVER.node_id, NOW, True), 60, "endpoint"),
        (announcement_value(ENDPOINT, SERVER.node_id, NOW, True), MAX_ANNOUNCE_TTL + 60, "future"),
        (announcement_value(ENDPOINT, b"\x01" * 20, NOW, True), 60, "node_id"),
    ],
    ids=[
        "unknown-field-padding",
        "credential-padding",
        "long-endpoint",
        "bad-endpoint",
        "long-expiry",
        "other-id",
    ],
)
def test_padded_or_long_lived_withdrawals_are_offences(value: object, ttl: float, reason: str) -> None:
    with pytest.raises(DHTValidationError, match=reason) as refused:
        registry().check(withdrawal(value, ttl=ttl), NOW)
    assert not isinstance(refused.value, DHTRecordRefused)  # every honest node refuses these: blame


def test_withdrawals_are_smaller_than_announcements() -> None:
    padded = announcement_value("[" + "f" * 55 + "]:65535", SERVER.node_id, NOW, True, credential="y" * 590)
    with pytest.raises(DHTValidationError, match="withdrawal is at most"):
        registry().check(withdrawal(padded), NOW)
    live = dict(padded, withdrawn=False)
    registry().check(withdrawal(live), NOW)  # the same bytes as an announcement are fine


def test_a_gated_withdrawal_needs_the_owners_valid_credential_and_its_absence_blames_nobody() -> None:
    gated = registry(gated=True)
    bare = announcement_value(ENDPOINT, SERVER.node_id, NOW, withdrawn=True)
    with pytest.raises(DHTRecordRefused, match="no credential"):
        gated.check(withdrawal(bare), NOW)
    stolen = announcement_value(
        ENDPOINT, SERVER.node_id, NOW, withdrawn=True, credential=token(Identity.generate())
    )
    with pytest.raises(DHTRecordRefused, match="another node key"):
        gated.check(withdrawal(stolen), NOW)
    own = announcement_value(ENDPOINT, SERVER.node_id, NOW, withdrawn=True, credential=token())
    assert gated.check(withdrawal(own), NOW).value["withdrawn"] is True


def test_prefix_announcements_naming_another_node_are_not_counted_as_replicas() -> None:
    honest, liar = b"\x01" * 20, b"\x02" * 20
    now = time.time()
    entries = {
        owner_subkey("3", honest): ValueWithExpiration(
            announcement_value("127.0.0.1:1", honest, now), now + 60
        ),
        # The liar signs its own subkey but names the honest node (or a made-up one) as the replica.
        owner_subkey("3", liar): ValueWithExpiration(
            announcement_value("127.0.0.1:2", honest, now), now + 60
        ),
        owner_subkey("4", liar): ValueWithExpiration(
            announcement_value("127.0.0.1:2", b"\x00" * 20, now), now + 60
        ),
    }
    children = live_children(entries)
    assert list(children) == [3] and [a.node_id for a in children[3]] == [honest]


RELAY = "198.51.100.9:4000/" + "ab" * 20


def test_relays_are_signed_with_the_announcement_and_reach_the_handle() -> None:
    value = announcement_value(ENDPOINT, SERVER.node_id, NOW, relays=[RELAY, "[2001:db8::1]:5/" + "cd" * 20])
    view = registry().check(withdrawal(value), NOW)
    children = live_children({view.subkey: ValueWithExpiration(view.value, view.expiration, view.owner)})
    assert children[3][0].relays == (RELAY, "[2001:db8::1]:5/" + "cd" * 20)
    withdrawn = announcement_value(ENDPOINT, SERVER.node_id, NOW, withdrawn=True, relays=[RELAY])
    assert "relays" not in withdrawn  # a withdrawal needs no way in


@pytest.mark.parametrize(
    ("relays", "reason"),
    [
        ([], "1 to 3"),
        ([RELAY] * 2, "distinct"),
        ([f"198.51.100.{i}:1/{i:02x}" + "ab" * 19 for i in range(4)], "1 to 3"),
        (["198.51.100.9:4000"], "distinct node id"),
        (["198.51.100.9:4000/" + SERVER.node_id.hex()], "other than the owner"),
        (["198.51.100.9:4000/" + "ab" * 20 + "x" * 80], "at most"),
        ([7], "host:port"),
        ("198.51.100.9:4000", "list"),
    ],
)
def test_bad_relay_lists_are_offences(relays: object, reason: str) -> None:
    value = {**announcement_value(ENDPOINT, SERVER.node_id, NOW), "relays": relays}
    with pytest.raises(DHTValidationError, match=reason) as refused:
        registry().check(withdrawal(value), NOW)
    assert not isinstance(refused.value, DHTRecordRefused)


@settings(max_examples=200, deadline=None)
@given(relays=msgpack_values)
def test_hostile_relay_lists_are_validated_without_crashing(relays: object) -> None:
    value = {**announcement_value(ENDPOINT, SERVER.node_id, NOW), "relays": relays}
    try:
        view = registry().check(withdrawal(value), NOW)
    except DHTValidationError:
        return
    assert isinstance(view.value["relays"], list) and 0 < len(view.value["relays"]) <= 3

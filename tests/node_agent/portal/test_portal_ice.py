"""STUN/TURN from the portal on the agent's side: the servers a node's connections use, the TURN grant of
its join, renewed with its credential before it expires and handed to new connections; hostile grants."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from local_portal import LocalPortal

from node_agent.identity import Identity
from node_agent.portal.client import PortalClient
from node_agent.portal.errors import ProtocolError
from node_agent.portal.ice import (
    IceServerSpec,
    TurnGrant,
    ice_servers_for,
    issue_turn_grant,
    parse_turn_grant,
    turn_password,
)
from node_agent.portal.joining import obtain_agent_state, refresh_turn_grant
from node_agent.portal.runtime import AgentOptions, AgentRuntime
from node_agent.portal.state import AGENT_STATE_FILE, load_agent_state
from node_agent.rtc.config import IceServer
from tests.processes import wait_until_async

SPECS = [IceServerSpec(urls=["stun:198.18.0.9:3478"]), IceServerSpec(urls=["turn:198.18.0.9:3478"])]


def test_turn_passwords_follow_coturns_rest_scheme() -> None:
    # base64(HMAC-SHA1(secret, username)), computed independently:
    # echo -n 1767225600:node | openssl dgst -sha1 -hmac secret -binary | base64
    assert turn_password("secret", "1767225600:node") == "vDWo+VOyygPahfykfuHJLQKzpLk="
    grant = issue_turn_grant("secret", "ab" * 20, now=1000.0, ttl=600)
    assert grant.username == f"1600:{'ab' * 20}" and grant.expires_at == 1600.0
    assert grant.credential == turn_password("secret", grant.username) and grant.renew_at() == 1300.0
    with pytest.raises(ValueError, match="no TURN secret"):
        issue_turn_grant("", "node", now=0, ttl=1)


def test_a_node_uses_the_projects_stun_and_turn_with_its_grant_then_its_own_servers() -> None:
    grant = TurnGrant(username="2000:n", credential="pw", expires_at=2000.0, issued_at=1000.0)
    own = (IceServer("stun:10.0.0.1:3478"),)

    servers = ice_servers_for(SPECS, grant, now=1500.0, extra=own)

    assert servers == (
        IceServer("stun:198.18.0.9:3478"),
        IceServer("turn:198.18.0.9:3478", username="2000:n", credential="pw"),
        IceServer("stun:10.0.0.1:3478"),
    )
    # without a grant, or with an expired one, TURN is left out (coturn would refuse it anyway)
    assert ice_servers_for(SPECS, None, now=1500.0) == (IceServer("stun:198.18.0.9:3478"),)
    assert ice_servers_for(SPECS, grant, now=2000.0) == (IceServer("stun:198.18.0.9:3478"),)


@given(
    st.one_of(
        st.none(), st.integers(), st.text(), st.lists(st.integers()), st.dictionaries(st.text(), st.text())
    )
)
def test_a_hostile_turn_field_is_a_protocol_error_never_a_crash(data: object) -> None:
    try:
        grant = parse_turn_grant(data)
    except ProtocolError:
        return
    assert grant is None and data is None


def test_an_oversized_or_non_finite_grant_is_refused() -> None:
    for bad in (
        {"username": "u" * 500, "credential": "p", "expires_at": 1.0},
        {"username": "u", "credential": "p", "expires_at": float("nan")},
        {"username": 5, "credential": "p", "expires_at": 1.0},
    ):
        with pytest.raises(ProtocolError):
            parse_turn_grant(bad)


@pytest.fixture
async def turn_portal(local_portal: LocalPortal) -> AsyncIterator[LocalPortal]:
    local_portal.behaviour.ice_servers = list(SPECS)
    local_portal.behaviour.turn_secret = "operator-secret"
    yield local_portal


async def test_the_join_grant_is_renewed_with_the_credential_and_given_to_new_connections(
    turn_portal: LocalPortal, tmp_path: Path
) -> None:
    # the renewal comes at the TURN grant's half-life (10 s), long before the credential's
    turn_portal.behaviour.turn_ttl = 20.0
    identity = Identity.generate()
    said: list[str] = []
    state = obtain_agent_state(
        turn_portal.url, "CODE-1234", identity, tmp_path / AGENT_STATE_FILE, say=said.append
    )
    first = parse_turn_grant(state.turn)
    assert first is not None and first.credential == turn_password("operator-secret", first.username)
    options = AgentOptions(data_dir=tmp_path, listen="127.0.0.1:0", num_experts=1, heartbeat_period=30)
    runtime = await AgentRuntime.create(
        PortalClient(turn_portal.url, timeout=2.0), identity, state, options, said.append
    )
    try:
        assert runtime.server is not None and runtime.server.pool is not None
        pool = runtime.server.pool
        assert [server.urls for server in pool.options.ice_servers] == [
            "stun:198.18.0.9:3478",
            "turn:198.18.0.9:3478",
        ]
        assert any("TURN credential valid until" in line for line in said)

        await wait_until_async(lambda: turn_portal.renewals, timeout=30)
        await wait_until_async(lambda: pool.options.ice_servers[1].username != first.username, timeout=30)
        renewed = parse_turn_grant(load_agent_state(tmp_path / AGENT_STATE_FILE).turn)
        assert renewed is not None and renewed.expires_at > first.expires_at
        assert pool.options.ice_servers[1].credential == renewed.credential
    finally:
        await runtime.shutdown()


async def test_a_restart_with_an_expired_grant_renews_before_serving(
    turn_portal: LocalPortal, tmp_path: Path
) -> None:
    identity = Identity.generate()
    state = obtain_agent_state(turn_portal.url, "CODE-1234", identity, tmp_path / AGENT_STATE_FILE, say=print)
    assert state.turn is not None
    state.turn = {**state.turn, "expires_at": time.time() - 10, "issued_at": time.time() - 100}
    options = AgentOptions(data_dir=tmp_path, listen="127.0.0.1:0", num_experts=1, heartbeat_period=30)
    runtime = await AgentRuntime.create(
        PortalClient(turn_portal.url, timeout=2.0), identity, state, options, print
    )
    try:
        assert turn_portal.renewals  # renewed once before the expert server started
        assert runtime.server is not None and runtime.server.pool is not None
        assert any(server.urls.startswith("turn:") for server in runtime.server.pool.options.ice_servers)
    finally:
        await runtime.shutdown()


def test_a_trainer_restarted_with_an_expired_grant_renews_once_for_a_fresh_one(
    turn_portal: LocalPortal, tmp_path: Path
) -> None:
    identity = Identity.generate()
    path = tmp_path / AGENT_STATE_FILE
    state = obtain_agent_state(turn_portal.url, "CODE-1234", identity, path, say=print)
    assert not refresh_turn_grant(state, identity, path)  # still fresh: nothing to do
    assert state.turn is not None
    state.turn = {**state.turn, "expires_at": time.time() - 10, "issued_at": time.time() - 100}
    old_credential = state.credential

    assert refresh_turn_grant(state, identity, path)

    grant = parse_turn_grant(load_agent_state(path).turn)
    assert grant is not None and grant.expires_at > time.time() + 600
    assert state.credential != old_credential and turn_portal.renewals
    turn_portal.stop()  # the portal away: the state stays as it was, no exception
    state.turn = {**state.turn, "expires_at": time.time() - 10}
    assert not refresh_turn_grant(state, identity, path, portal_timeout=1.0)


@pytest.mark.parametrize(
    "servers",
    [
        [{"urls": ["http://198.18.0.9"]}],  # not STUN/TURN
        [{"urls": ["turn:user:pw@198.18.0.9:3478"]}],  # credentials never travel in the public config
        [{"urls": []}],
        [{"urls": ["stun:a:1"]}] * 9,
        [{"urls": ["stun:" + "a" * 300]}],
        {"urls": "stun:a:1"},
    ],
)
def test_a_project_config_with_unusable_ice_servers_is_refused(
    local_portal: LocalPortal, servers: object
) -> None:
    from node_agent.portal.project_config import parse_project_config

    with pytest.raises(ProtocolError):
        parse_project_config({**local_portal.config(), "ice_servers": servers})

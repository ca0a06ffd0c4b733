"""Relayed ICE pairs wait for direct ones (`node_agent.rtc.direct_first`); the lab shows it across NATs
(tests/e2e/test_nat_data_path.py), these check the rule and that aioice still has what the wrapper uses."""

from __future__ import annotations

import inspect
from types import SimpleNamespace

import aioice.ice
from aioice.ice import CandidatePair

from node_agent.rtc import direct_first
from node_agent.rtc.direct_first import install_direct_first, is_relayed_pair, relay_wait


def pair(
    local: str, remote: str, state: CandidatePair.State = CandidatePair.State.WAITING
) -> SimpleNamespace:
    return SimpleNamespace(
        local_candidate=SimpleNamespace(type=local),
        remote_candidate=SimpleNamespace(type=remote),
        state=state,
    )


def connection(*pairs: SimpleNamespace, started: float | None = 100.0) -> SimpleNamespace:
    return SimpleNamespace(_check_list=list(pairs), _colearn_checks_started=started)


def test_a_pair_is_relayed_when_either_end_is_a_turn_candidate() -> None:
    assert is_relayed_pair(pair("relay", "srflx")) and is_relayed_pair(pair("host", "relay"))
    assert not is_relayed_pair(pair("host", "srflx")) and not is_relayed_pair(pair("host", "prflx"))


def test_relayed_pairs_wait_out_the_grace_while_a_direct_pair_may_still_succeed() -> None:
    install_direct_first(1.0)
    relayed, direct = pair("relay", "relay"), pair("host", "srflx", CandidatePair.State.IN_PROGRESS)
    conn = connection(direct, relayed)

    assert relay_wait(conn, direct, 100.2) == 0.0
    assert abs(relay_wait(conn, relayed, 100.2) - 0.8) < 1e-9
    assert relay_wait(conn, relayed, 101.5) == 0.0


def test_relayed_pairs_go_at_once_when_every_direct_pair_failed_or_none_exists() -> None:
    install_direct_first(1.0)
    relayed = pair("host", "relay")
    failed = pair("host", "srflx", CandidatePair.State.FAILED)
    assert relay_wait(connection(failed, relayed), relayed, 100.1) == 0.0
    assert relay_wait(connection(relayed), relayed, 100.1) == 0.0
    install_direct_first(0.0)
    try:
        assert relay_wait(connection(pair("host", "srflx"), relayed), relayed, 100.1) == 0.0
    finally:
        install_direct_first(direct_first.DEFAULT_GRACE)


def test_the_wrapped_aioice_method_and_attributes_are_still_there() -> None:
    install_direct_first()
    original = direct_first._original_check_start
    assert inspect.iscoroutinefunction(original)
    assert list(inspect.signature(original).parameters) == ["self", "pair"]
    assert aioice.ice.Connection.check_start is not original  # the wrapper is installed
    conn = aioice.ice.Connection(ice_controlling=True)
    assert isinstance(conn._check_list, list) and conn._check_list_done is False
    assert callable(conn.check_state) and callable(conn.check_start_task)

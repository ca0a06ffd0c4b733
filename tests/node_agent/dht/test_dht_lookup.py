from __future__ import annotations

import os

from node_agent.dht.lookup import LookupState
from node_agent.dht.routing import distance

TARGET = bytes(20)


def ids(count: int) -> list[bytes]:
    return [os.urandom(20) for _ in range(count)]


def test_lookup_keeps_alpha_in_flight_and_finishes_when_beam_answered() -> None:
    state = LookupState(TARGET, beam=3, alpha=2)
    peers = ids(6)
    for i, peer in enumerate(peers):
        state.add(peer, ("127.0.0.1", i + 1))
    first = state.next_queries()
    assert len(first) == 2 and state.next_queries() == []
    nearest = sorted(peers, key=lambda p: distance(p, TARGET))
    assert [p for p, _ in first] == nearest[:2]
    state.on_success(first[0][0], [])
    state.on_failure(first[1][0])  # a dead node drops out; the next nearest joins the beam
    second = state.next_queries()
    assert [p for p, _ in second] == nearest[2:4]
    for peer, _ in second:
        state.on_success(peer, [])
    assert state.finished
    assert [p for p, _ in state.closest_responded(3)] == [nearest[0], nearest[2], nearest[3]]


def test_closer_nodes_learned_from_answers_are_queried_and_hops_counted() -> None:
    state = LookupState(TARGET, beam=1, alpha=1)
    far, closer = b"\xff" * 20, b"\x00" * 19 + b"\x01"
    state.add(far, ("127.0.0.1", 1))
    (queried,) = state.next_queries()
    state.on_success(queried[0], [(closer, ("127.0.0.1", 2)), (far, ("10.9.9.9", 9))])
    assert not state.finished
    (second,) = state.next_queries()
    assert second == (closer, ("127.0.0.1", 2))
    state.on_success(closer, [])
    assert state.finished and state.hops == 2
    assert state.queries_sent == 2


def test_own_id_is_never_a_candidate_and_stop_ends_early() -> None:
    own = os.urandom(20)
    state = LookupState(TARGET, beam=5, alpha=3, own_id=own)
    state.add(own, ("127.0.0.1", 1))
    assert state.next_queries() == [] and state.finished
    state = LookupState(TARGET, beam=5, alpha=3)
    for i, peer in enumerate(ids(5)):
        state.add(peer, ("127.0.0.1", i + 1))
    state.next_queries()
    state.stop()
    assert state.finished and state.next_queries() == []

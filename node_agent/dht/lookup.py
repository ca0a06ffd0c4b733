"""Iterative parallel lookup as a pure state machine (Kademlia section 2.3, node lookup).

The driver asks :meth:`LookupState.next_queries`, sends them, and reports each answer or timeout. The
lookup keeps at most ``alpha`` requests in flight and finishes when the ``beam`` nearest candidates not
known to have failed have all answered. No sockets or clocks, so the same core runs over UDP, in the
in-memory simulator, and in unit tests.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from node_agent.dht.routing import id_to_int

Address = tuple[str, int]


class _State(enum.Enum):
    NEW = 0
    PENDING = 1
    DONE = 2
    FAILED = 3


@dataclass(slots=True)
class _Candidate:
    node_id: bytes
    address: Address
    distance: int
    hop: int = 1  # path length from us: initial candidates are 1, nodes they name are 2, ...
    state: _State = _State.NEW


class LookupState:
    def __init__(self, target: bytes, beam: int, alpha: int, own_id: bytes | None = None) -> None:
        self.target = target
        self.beam = beam
        self.alpha = alpha
        self.own_id = own_id
        self.stopped = False
        self.queries_sent = 0
        self._target_int = id_to_int(target)
        self._candidates: dict[bytes, _Candidate] = {}
        self._order: list[_Candidate] | None = None

    def add(self, node_id: bytes, address: Address, hop: int = 1) -> None:
        """Learn a candidate; an id already known keeps its first address (claims never overwrite)."""
        if node_id == self.own_id or node_id in self._candidates:
            return
        self._candidates[node_id] = _Candidate(node_id, address, id_to_int(node_id) ^ self._target_int, hop)
        self._order = None

    def _active(self) -> list[_Candidate]:
        if self._order is None:
            self._order = sorted(self._candidates.values(), key=lambda c: c.distance)
        active = [c for c in self._order if c.state is not _State.FAILED]
        return active[: self.beam]

    @property
    def in_flight(self) -> int:
        return sum(1 for c in self._candidates.values() if c.state is _State.PENDING)

    def next_queries(self) -> list[tuple[bytes, Address]]:
        if self.stopped:
            return []
        budget = self.alpha - self.in_flight
        chosen: list[tuple[bytes, Address]] = []
        for candidate in self._active():
            if budget <= 0:
                break
            if candidate.state is _State.NEW:
                candidate.state = _State.PENDING
                chosen.append((candidate.node_id, candidate.address))
                budget -= 1
        self.queries_sent += len(chosen)
        return chosen

    def on_success(self, node_id: bytes, nodes: list[tuple[bytes, Address]]) -> None:
        candidate = self._candidates.get(node_id)
        hop = 1
        if candidate is not None:
            candidate.state = _State.DONE
            hop = candidate.hop + 1
        for other_id, address in nodes:
            self.add(other_id, address, hop)

    def on_failure(self, node_id: bytes) -> None:
        candidate = self._candidates.get(node_id)
        if candidate is not None and candidate.state is not _State.DONE:
            candidate.state = _State.FAILED

    def stop(self) -> None:
        """End early (a value lookup that already has its answer)."""
        self.stopped = True

    @property
    def finished(self) -> bool:
        if self.stopped:
            return True
        active = self._active()
        if all(c.state is _State.DONE for c in active):
            return True
        return not any(c.state in (_State.NEW, _State.PENDING) for c in active)

    @property
    def hops(self) -> int:
        """Path length to the nearest node that answered (0 if none did): how deep the lookup went."""
        order = self._order or sorted(self._candidates.values(), key=lambda c: c.distance)
        return next((c.hop for c in order if c.state is _State.DONE), 0)

    def closest_responded(self, count: int) -> list[tuple[bytes, Address]]:
        if self._order is None:
            self._order = sorted(self._candidates.values(), key=lambda c: c.distance)
        done = [(c.node_id, c.address) for c in self._order if c.state is _State.DONE]
        return done[:count]

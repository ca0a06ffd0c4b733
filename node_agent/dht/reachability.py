"""Whether this node can be reached from outside, as peers see it (pure: no sockets, no clocks).

Two questions, answered by other peers because a node behind a NAT cannot answer them itself:

* **Where am I?** Every DHT response carries, signed by the responder, the address the request came from
  (``messages.seal(observed=...)``). :class:`AddressVotes` takes one vote per responder (per address prefix,
  so one operator with many ids is one voice) and names an address only once ``min_votes`` distinct
  responders agree and they are a strict majority: a single lying peer can never move it.
* **Do unsolicited packets reach me?** A dial-back (after libp2p's AutoNAT, learnt from, not copied): we ask a
  peer B to have a *different* peer C send one ping, carrying our nonce, to the address B sees us at. A ping
  with that nonce arriving from someone other than B proves that a stranger's packet gets through.
  :func:`dial_back_outcome` turns the answers into :class:`Reachability`.
"""

from __future__ import annotations

import enum
from collections import OrderedDict
from collections.abc import Sequence

Address = tuple[str, int]


class Reachability(enum.Enum):
    REACHABLE = "reachable"
    UNREACHABLE = "unreachable"
    UNKNOWN = "unknown"


class AddressVotes:
    """Addresses peers observed us at: the latest vote of each reporter, forgotten after ``ttl`` seconds."""

    def __init__(self, min_votes: int = 3, ttl: float = 900.0, capacity: int = 64) -> None:
        self.min_votes = min_votes
        self.ttl = ttl
        self.capacity = capacity
        self._votes: OrderedDict[object, tuple[Address, float]] = OrderedDict()

    def add(self, reporter: object, address: Address, now: float) -> None:
        """Record that ``reporter`` (a source key or node id) saw us at ``address``."""
        self._votes.pop(reporter, None)
        self._votes[reporter] = (address, now)
        while len(self._votes) > self.capacity:
            self._votes.popitem(last=False)

    def winner(self, now: float) -> Address | None:
        """The address at least ``min_votes`` live reporters agree on and more than half of them name."""
        counts: dict[Address, int] = {}
        live = 0
        for address, seen in self._votes.values():
            if now - seen <= self.ttl:
                live += 1
                counts[address] = counts.get(address, 0) + 1
        if not counts:
            return None
        address, count = max(counts.items(), key=lambda item: item[1])
        return address if count >= self.min_votes and 2 * count > live else None

    def __len__(self) -> int:
        return len(self._votes)


def dial_back_outcome(sent: Sequence[bool], probe_arrived: bool, min_confirmed: int = 2) -> Reachability:
    """Reachable if a stranger's probe arrived; unreachable if at least ``min_confirmed`` helpers confirmed
    sending one and none arrived (one lost datagram must not make a reachable node hide); else unknown."""
    if probe_arrived:
        return Reachability.REACHABLE
    if sum(1 for confirmed in sent if confirmed) >= min_confirmed:
        return Reachability.UNREACHABLE
    return Reachability.UNKNOWN

"""Group formation decisions (pure: no DHT, no sockets, no clock; times are passed in).

Peers looking for a group store a `Declaration` under the group key with their matchmaking deadline as the
record's expiration. Everyone who reads the key orders the open declarations by (expiration, node id) and
follows the first one: the leader is chosen without an extra round of messages. The leader admits joiners
until the group has `target_size` members, or until its deadline with at least `min_size`.

Group keys rotate between rounds as in Moshpit SGD (arXiv 2103.03239): a peer's key holds `nbits` bits; after
a round it drops its oldest bits and appends its index in the group, so the members of one group spread over
different groups next round and information mixes across the swarm in a few rounds.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable
from dataclasses import dataclass

from node_agent.averaging.messages import Declaration


@dataclass(frozen=True, slots=True)
class Candidate:
    node_id: bytes
    expiration: float
    declaration: Declaration


def choose_leader(
    candidates: Iterable[Candidate], now: float, skip: frozenset[bytes] = frozenset()
) -> Candidate | None:
    """The open, unexpired declaration that comes first by (expiration, node id), or None."""
    live = [c for c in candidates if c.expiration > now and not c.declaration.taken and c.node_id not in skip]
    return min(live, key=lambda c: (c.expiration, c.node_id), default=None)


class Decision(enum.Enum):
    WAIT = "wait"
    BEGIN = "begin"
    FAIL = "fail"


def leader_decision(size: int, target_size: int, min_size: int, now: float, deadline: float) -> Decision:
    """What a leader with `size` members (itself included) does now."""
    if size >= target_size:
        return Decision.BEGIN
    if now < deadline:
        return Decision.WAIT
    return Decision.BEGIN if size >= min_size else Decision.FAIL


def group_bits_count(expected_peers: int, target_size: int) -> int:
    """Bits of the group key so that about `target_size` peers share one key."""
    if expected_peers <= target_size or target_size < 2:
        return 0
    return max(0, round(math.log2(expected_peers / target_size)))


def next_group_bits(bits: str, index: int, group_size: int) -> str:
    """Moshpit rotation: drop the oldest bits, append this member's index in its group."""
    if not bits:
        return bits
    width = min(len(bits), max(1, (group_size - 1).bit_length()))
    index_bits = format(index % (1 << width), f"0{width}b")
    return (bits + index_bits)[-len(bits) :]


def initial_group_bits(index: int, nbits: int) -> str:
    return format(index % (1 << nbits), f"0{nbits}b") if nbits else ""

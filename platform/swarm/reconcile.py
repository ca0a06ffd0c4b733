"""Node lifecycle from two sources of evidence: what agents report (heartbeats) and what the DHT shows.

Pure: the observer (and tests) pass in the nodes' facts, the announcements read from the DHT and `now`;
out come the state changes to apply and the mismatches worth showing an admin, and the cell arithmetic of one
grid (`swarm.grids` takes a project's grids together).

Rules (thresholds in seconds, from settings.SWARM):
* banned and pending nodes keep their state (only an admin or the owner changes those);
* heartbeat within `online_within`: online, unless it is a server that claims experts but none of them is
  in the DHT (it cannot be reached by trainers), or whose experts are announced but the observer's last
  `info` probe found them not served (nobody could connect, or they did not answer): unreachable, with
  the probe's reason;
* heartbeat older than `online_within` but not older than `offline_after`: unreachable (missed beats);
* no heartbeat for `offline_after`: unreachable if its experts are still announced in the DHT (announced
  but silent), otherwise offline (or still registered if it never sent a heartbeat).
When the DHT could not be read this round, only heartbeats count.
"""

from __future__ import annotations

import functools
import itertools
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

PENDING, REGISTERED, ONLINE, UNREACHABLE, OFFLINE, BANNED = (
    "pending", "registered", "online", "unreachable", "offline", "banned",
)  # fmt: skip
_FROZEN = {PENDING, BANNED}
_NOT_SERVING = {"unreachable", "reachable"}  # probe outcomes (swarm.models.ProbeState) short of serving


@dataclass(frozen=True, slots=True)
class Thresholds:
    online_within: float = 30.0
    offline_after: float = 90.0


@dataclass(frozen=True, slots=True)
class NodeFacts:
    node_id: str  # hex
    state: str
    role: str
    claimed_experts: tuple[str, ...]
    last_heartbeat: float | None  # unix time
    probe: str = ""  # the observer's last probe: "", "unreachable", "reachable" (not serving), "serving"
    probe_reason: str = ""


@dataclass(frozen=True, slots=True)
class StateChange:
    node_id: str
    previous: str
    state: str
    reason: str


@dataclass(frozen=True, slots=True)
class Reconciliation:
    changes: list[StateChange] = field(default_factory=list)
    announced_without_heartbeat: list[str] = field(default_factory=list)
    heartbeat_without_announcement: list[str] = field(default_factory=list)
    unknown_announcers: list[str] = field(default_factory=list)


def signed_off(facts: NodeFacts, now: float, limits: Thresholds) -> bool:
    """Whether the node's last heartbeat said "going offline" (a clean stop).

    Any other heartbeat wakes an offline node, and the observer only moves a node offline once its last
    heartbeat is older than `offline_after`; so an offline node with a newer heartbeat stopped cleanly.
    """
    age = None if facts.last_heartbeat is None else now - facts.last_heartbeat
    return facts.state == OFFLINE and age is not None and age <= limits.offline_after


def _decide(facts: NodeFacts, announced: set[str] | None, now: float, limits: Thresholds) -> tuple[str, str]:
    age = None if facts.last_heartbeat is None else now - facts.last_heartbeat
    in_dht = bool(announced)
    if signed_off(facts, now, limits):
        return OFFLINE, "stopped cleanly"
    if age is not None and age <= limits.online_within:
        if announced is not None and facts.role == "server" and facts.claimed_experts and not in_dht:
            return UNREACHABLE, "heartbeats, but none of its experts is announced in the DHT"
        if announced is not None and facts.role == "server" and in_dht and facts.probe in _NOT_SERVING:
            return UNREACHABLE, f"announced, but not serving: {facts.probe_reason or facts.probe}"[:200]
        return ONLINE, "heartbeating"
    if age is not None and age <= limits.offline_after:
        return UNREACHABLE, f"no heartbeat for {age:.0f}s"
    if in_dht:
        return UNREACHABLE, "experts announced in the DHT, but no heartbeat"
    if age is None:
        return REGISTERED, "never sent a heartbeat"
    return OFFLINE, f"no heartbeat for {age:.0f}s"


def reconcile(
    nodes: Iterable[NodeFacts],
    announced: Mapping[str, set[str]] | None,
    *,
    now: float,
    limits: Thresholds,
) -> Reconciliation:
    """Decide each node's state; `announced` (node id hex -> uids in the DHT) is None if unreadable."""
    result = Reconciliation()
    known: set[str] = set()
    for facts in nodes:
        known.add(facts.node_id)
        node_announced = None if announced is None else set(announced.get(facts.node_id, set()))
        if facts.state in _FROZEN:
            continue
        state, reason = _decide(facts, node_announced, now, limits)
        if state != facts.state:
            result.changes.append(StateChange(facts.node_id, facts.state, state, reason))
        if announced is None:
            continue
        fresh = (
            facts.last_heartbeat is not None
            and now - facts.last_heartbeat <= limits.online_within
            and not signed_off(facts, now, limits)
        )
        if node_announced and not fresh:
            result.announced_without_heartbeat.append(facts.node_id)
        if fresh and facts.role == "server" and facts.claimed_experts and not node_announced:
            result.heartbeat_without_announcement.append(facts.node_id)
    if announced is not None:
        result.unknown_announcers.extend(sorted(set(announced) - known))
    return result


def grid_cells(dims: Sequence[int]) -> int:
    """How many cells a grid has."""
    return math.prod(dims)


def cell_uid(prefix: str, dims: Sequence[int], index: int) -> str:
    """The uid of the `index`-th cell in row-major order (`ffn.1.0` is index 2 of a 2x2 grid)."""
    coords = []
    for side in reversed(dims):
        index, coordinate = divmod(index, side)
        coords.append(coordinate)
    return ".".join([prefix, *map(str, reversed(coords))])


@functools.lru_cache(maxsize=64)
def _uid_pattern(prefix: str, rank: int) -> re.Pattern[str]:
    coordinate = r"\.(0|[1-9][0-9]{0,5})"
    return re.compile(re.escape(prefix) + coordinate * rank)


def cell_index(prefix: str, dims: Sequence[int], uid: str) -> int | None:
    """Row-major index of `uid` in the grid, or None when it is not one of its cells (canonical spelling)."""
    match = _uid_pattern(prefix, len(dims)).fullmatch(uid)
    if match is None:
        return None
    index = 0
    for part, side in zip(match.groups(), dims, strict=True):
        value = int(part)
        if value >= side:
            return None
        index = index * side + value
    return index


def grid_uids(prefix: str, dims: Sequence[int]) -> list[str]:
    """Every expert uid of a grid: `ffn.0.0` .. `ffn.3.3` for prefix ffn and dims (4, 4). Small grids only."""
    return [
        ".".join([prefix, *map(str, coords)]) for coords in itertools.product(*(range(side) for side in dims))
    ]

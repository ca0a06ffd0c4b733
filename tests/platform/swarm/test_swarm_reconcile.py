"""The pure pieces: lifecycle reconciliation, grid coverage, token bucket, join codes, charts."""

from __future__ import annotations

from swarm.charts import polyline
from swarm.codes import code_hash, new_code, normalise_code
from swarm.grids import Grids
from swarm.ratelimit import take_token
from swarm.reconcile import NodeFacts, Thresholds, grid_uids, reconcile

LIMITS = Thresholds(online_within=30, offline_after=90)
NOW = 1_000_000.0


def facts(node_id: str = "a" * 40, state: str = "registered", role: str = "server", beat: float | None = None,
          experts: tuple[str, ...] = ("ffn.0.0",)) -> NodeFacts:  # fmt: skip
    return NodeFacts(node_id, state, role, experts, beat)


def states(nodes: list[NodeFacts], announced: dict[str, set[str]] | None) -> dict[str, str]:
    result = reconcile(nodes, announced, now=NOW, limits=LIMITS)
    return {c.node_id: c.state for c in result.changes}


def test_fresh_heartbeat_and_announced_is_online() -> None:
    assert states([facts(beat=NOW - 5)], {"a" * 40: {"ffn.0.0"}}) == {"a" * 40: "online"}


def test_heartbeats_without_announcements_is_unreachable() -> None:
    result = reconcile([facts(state="online", beat=NOW - 5)], {}, now=NOW, limits=LIMITS)
    assert [c.state for c in result.changes] == ["unreachable"]
    assert result.heartbeat_without_announcement == ["a" * 40]


def test_announced_but_silent_is_unreachable_then_offline_once_withdrawn() -> None:
    node = facts(state="online", beat=NOW - 200)
    result = reconcile([node], {"a" * 40: {"ffn.0.0"}}, now=NOW, limits=LIMITS)
    assert [c.state for c in result.changes] == ["unreachable"]
    assert result.announced_without_heartbeat == ["a" * 40]
    assert states([node], {}) == {"a" * 40: "offline"}


def test_late_heartbeats_are_unreachable_and_no_heartbeat_ever_stays_registered() -> None:
    assert states([facts(state="online", beat=NOW - 60)], {"a" * 40: {"ffn.0.0"}}) == {
        "a" * 40: "unreachable"
    }
    assert states([facts(state="registered", beat=None)], {}) == {}


def test_trainers_need_no_announcements_and_unreadable_dht_trusts_heartbeats() -> None:
    assert states([facts(role="trainer", experts=(), beat=NOW - 1)], {}) == {"a" * 40: "online"}
    assert states([facts(beat=NOW - 1)], None) == {"a" * 40: "online"}


def test_banned_and_pending_nodes_are_left_alone_and_strangers_are_reported() -> None:
    nodes = [facts("a" * 40, "banned", beat=NOW), facts("b" * 40, "pending", beat=None)]
    result = reconcile(nodes, {"c" * 40: {"ffn.1.1"}}, now=NOW, limits=LIMITS)
    assert result.changes == [] and result.unknown_announcers == ["c" * 40]


def test_grid_coverage_counts_replicas_and_ignores_cells_outside_the_grid() -> None:
    assert grid_uids("ffn", (2, 2)) == ["ffn.0.0", "ffn.0.1", "ffn.1.0", "ffn.1.1"]
    grid = Grids(prefixes=("ffn",), dims=(2, 2))
    cells = grid.coverage({"a": {"ffn.0.0", "ffn.9.9"}, "b": {"ffn.0.0", "ffn.1.1"}})
    assert cells == {"ffn.0.0": 2, "ffn.1.1": 1}  # covered cells only: a hole is a cell not listed


def test_token_bucket_allows_a_burst_then_one_per_interval() -> None:
    tokens, updated = None, None
    decisions = []
    for _ in range(4):
        d = take_token(tokens, updated, now=100.0, interval=5.0, burst=3)
        decisions.append(d.allowed)
        if d.allowed:
            tokens, updated = d.tokens, 100.0
    assert decisions == [True, True, True, False]
    refused = take_token(tokens, updated, now=102.0, interval=5.0, burst=3)
    assert not refused.allowed and 2.9 < refused.retry_after < 3.1
    assert take_token(tokens, updated, now=105.0, interval=5.0, burst=3).allowed


def test_join_codes_are_normalised_before_hashing() -> None:
    code = new_code()
    assert len(code) == 14 and code.count("-") == 2
    assert code_hash(code.lower().replace("-", " ")) == code_hash(code)
    assert normalise_code("abio-l") == "AB101"


def test_polyline_scales_into_the_box() -> None:
    assert polyline([1.0]) == ""
    points = polyline([0.0, 1.0], width=100, height=10, pad=0)
    assert points == "0.0,10.0 100.0,0.0"


def test_a_node_that_signed_off_stays_offline_until_its_next_heartbeat() -> None:
    # Offline with a recent heartbeat: its last heartbeat said "going offline"; no missing-experts alert.
    result = reconcile([facts(state="offline", beat=NOW - 5)], {}, now=NOW, limits=LIMITS)
    assert result.changes == [] and result.heartbeat_without_announcement == []
    assert states([facts(state="offline", beat=NOW - 5)], {"a" * 40: {"ffn.0.0"}}) == {}
    # Past the offline threshold the usual rules apply again.
    assert states([facts(state="offline", beat=NOW - 200)], {"a" * 40: {"ffn.0.0"}}) == {
        "a" * 40: "unreachable"
    }

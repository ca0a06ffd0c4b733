"""Agents that join at the same moment cover the grid: each first reads an empty census and picks cells at
random, then looks again and moves its duplicated cells to holes (`census.cells_to_move`)."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest
from local_portal import LocalPortal
from test_portal_join_agent import gated_bootstrap, read_until, start_agent, stop_agent  # noqa: F401

from node_agent.dht import DHTNode
from node_agent.portal.census import cells_to_move, grid_uids, live_replica_owners
from node_agent.portal.gate import CredentialPolicy, install_credential_checks
from tests.processes import wait_until_async

A, B, C = b"\x01" * 20, b"\x02" * 20, b"\x03" * 20
FFN = [("ffn", [2, 2])]


def test_only_the_higher_owners_of_a_shared_cell_move_and_only_to_holes() -> None:
    owners = {"ffn.0.0": {A, B, C}, "ffn.0.1": {B}, "ffn.1.0": {C}}
    rng = random.Random(1)
    # A is the lowest owner of ffn.0.0: it stays; B and C each move it to a different hole.
    assert cells_to_move(["ffn.0.0"], owners, A, FFN, rng) == {}
    moved_b = cells_to_move(["ffn.0.0", "ffn.0.1"], owners, B, FFN, rng)
    assert moved_b == {"ffn.0.0": "ffn.1.1"}
    # No hole left: the two lowest owners of a cell stay (two replicas: its state outlives a volunteer),
    # a third moves to a cell with a single replica; a cell with two replicas keeps both.
    full = owners | {"ffn.1.1": {A}}
    assert cells_to_move(["ffn.0.0", "ffn.1.0"], full, C, FFN, rng)["ffn.0.0"] in {
        "ffn.0.1",
        "ffn.1.1",
    }
    assert cells_to_move(["ffn.0.0", "ffn.0.1"], full, B, FFN, rng) == {}
    pairs = {"ffn.0.0": {A, B}, "ffn.0.1": {A, C}, "ffn.1.0": {B, C}, "ffn.1.1": {A}}
    assert cells_to_move(["ffn.0.0", "ffn.1.0"], pairs, B, FFN, rng) == {}
    # A cell I serve alone never moves, whatever holes exist.
    assert cells_to_move(["ffn.0.1"], owners, B, FFN, rng) == {}


def test_moves_never_pick_the_same_hole_twice_or_one_of_my_cells() -> None:
    uids = grid_uids("ffn", [4, 4])
    mine = uids[:6]
    owners = {uid: {A, B} for uid in mine}
    moves = cells_to_move(mine, owners, B, [("ffn", [4, 4])], random.Random(7))
    assert sorted(moves) == sorted(mine)
    assert len(set(moves.values())) == 6 and not set(moves.values()) & set(mine)


@pytest.mark.slow
async def test_agents_started_together_cover_the_whole_grid(
    local_portal: LocalPortal,
    gated_bootstrap: DHTNode,  # noqa: F811
    tmp_path: Path,
) -> None:
    local_portal.behaviour.grid = [4, 4]
    local_portal.behaviour.codes = {f"CODE-{i}" for i in range(3)}
    reader = await DHTNode.create(
        initial_peers=[gated_bootstrap.endpoint], listen="127.0.0.1:0", client_mode=True
    )
    install_credential_checks(reader, CredentialPolicy("demo", local_portal.identity.public_key_bytes))
    common = ["--listen", "127.0.0.1:0", "--rtc-loopback-only", "--experts", "6", "--heartbeat-period", "1"]
    common += ["--announce-period", "2", "--rebalance-after", "3"]
    agents = [
        await start_agent(local_portal.url, f"CODE-{i}", "--data-dir", str(tmp_path / f"node-{i}"), *common)
        for i in range(3)
    ]
    outputs: list[list[str]] = [[] for _ in agents]
    try:
        await asyncio.gather(
            *(
                read_until(agent, r"serving 6 ffn expert", out)
                for agent, out in zip(agents, outputs, strict=True)
            )
        )

        async def holes() -> list[str]:
            owners = await live_replica_owners(reader, [("ffn", [4, 4])])
            return [uid for uid in grid_uids("ffn", [4, 4]) if not owners.get(uid)]

        async def covered() -> bool:
            return not await holes()

        try:
            await wait_until_async(
                covered, timeout=90, interval=1.0, what="every cell of the 4x4 grid served"
            )
        except TimeoutError:
            pytest.fail(
                f"holes {await holes()}; agents said:\n" + "".join(line for out in outputs for line in out)
            )
    finally:
        codes = [await stop_agent(agent, out) for agent, out in zip(agents, outputs, strict=True)]
        await reader.shutdown()
    assert codes == [0, 0, 0], "".join(line for out in outputs for line in out)

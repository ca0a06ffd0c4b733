"""A language-model project (task `lm`, one grid per block): volunteers serve cells of every grid, and the
portal trainer trains the project's LM, reporting bits per byte; against the local portal, real DHT nodes,
a real `node-agent join` process and WebRTC between them."""

from __future__ import annotations

import asyncio
import json
import math
import os
import random
import signal
import sys
from pathlib import Path

import msgspec
import pytest
from local_portal import LocalPortal
from test_portal_join_agent import REPO, gated_bootstrap, read_until, start_agent, stop_agent  # noqa: F401

from node_agent.cli import main
from node_agent.cli.train_lm import project_lm_config
from node_agent.dht import DHTNode
from node_agent.portal.census import cells_to_move, choose_cells, default_expert_count, grids_uids
from node_agent.portal.project_config import LMSpec
from node_agent.portal.runtime import largest_expert_parameters
from node_agent.portal.trainer_reporting import metric_point
from node_agent.training.metrics import MetricsEvent
from tests.processes import wait_until_async

A, B, C = b"\x01" * 20, b"\x02" * 20, b"\x03" * 20
TWO_BLOCKS = [("lm.b0", [2, 2]), ("lm.b1", [2, 2])]
SMALL_LM = LMSpec(blocks=2, seq_len=16, window=8, heads=2)


def test_a_node_spreads_its_cells_over_every_grid() -> None:
    for seed in range(10):
        chosen = choose_cells(TWO_BLOCKS, {}, 4, random.Random(seed))
        assert sorted(uid[:5] for uid in chosen) == ["lm.b0", "lm.b0", "lm.b1", "lm.b1"]
    assert {uid[:5] for uid in choose_cells(TWO_BLOCKS, {}, 2, random.Random(3))} == {"lm.b0", "lm.b1"}
    # Fewest live replicas first, whatever the grid: a covered block gets cells only after the bare one.
    live = {uid: 1 for uid in grids_uids(TWO_BLOCKS) if uid.startswith("lm.b0")}
    assert all(uid.startswith("lm.b1") for uid in choose_cells(TWO_BLOCKS, live, 4, random.Random(1)))
    assert len(choose_cells(TWO_BLOCKS, {}, 100, random.Random(1))) == 8
    assert default_expert_count([("ffn", [4, 4])]) == 4
    assert default_expert_count([(f"lm.b{k}", [4, 4]) for k in range(6)]) == 6


def test_a_node_hosts_one_expert_per_block_within_a_laptops_memory() -> None:
    portal = LocalPortal()
    portal.behaviour.lm = SMALL_LM
    assert largest_expert_parameters(portal.project_config()) == 8 * 16 * 16 + 7 * 16
    width_1024 = 8 * 1024 * 1024 + 7 * 1024  # 134 MB while training: 15 fit in 2 GiB
    blocks = [(f"lm.b{k}", [16, 16]) for k in range(64)]
    assert default_expert_count(blocks[:4], width_1024) == 4
    assert default_expert_count(blocks, width_1024) == 15
    assert default_expert_count(blocks, 8 * 8192 * 8192) == 1  # 8.6 GB each: one, whatever the budget


def test_a_duplicated_cell_moves_to_a_hole_of_its_own_grid_first() -> None:
    owners = {"lm.b0.0.0": {A, B}, "lm.b1.0.0": {A, B}}
    for seed in range(10):
        moves = cells_to_move(["lm.b0.0.0", "lm.b1.0.0"], owners, B, TWO_BLOCKS, random.Random(seed))
        assert moves["lm.b0.0.0"].startswith("lm.b0.") and moves["lm.b1.0.0"].startswith("lm.b1.")
    # No hole left in its grid: another grid's hole.
    full_b0 = {uid: {A} for uid in grids_uids(TWO_BLOCKS[:1])} | {"lm.b0.0.0": {A, B}}
    assert cells_to_move(["lm.b0.0.0"], full_b0, B, TWO_BLOCKS, random.Random(1))["lm.b0.0.0"][:5] == "lm.b1"
    # No hole anywhere: a third replica moves to a cell with a single one, of its own grid first.
    single = {uid: {A} for uid in grids_uids(TWO_BLOCKS)}
    crowded = single | {"lm.b0.0.0": {A, B, C}, "lm.b1.0.0": {A, B, C}}
    for seed in range(10):
        moves = cells_to_move(["lm.b0.0.0", "lm.b1.0.0"], crowded, C, TWO_BLOCKS, random.Random(seed))
        assert moves["lm.b0.0.0"].startswith("lm.b0.") and moves["lm.b1.0.0"].startswith("lm.b1.")
    assert cells_to_move(["lm.b0.0.0"], crowded, B, TWO_BLOCKS, random.Random(1)) == {}  # two stay


def test_the_project_fixes_the_language_model() -> None:
    portal = LocalPortal()
    portal.behaviour.lm = SMALL_LM
    model = project_lm_config(portal.project_config(), k_best=2)
    assert (model.blocks, model.grid, model.hidden_dim, model.uid_prefix) == (2, (2, 2), 16, "lm")
    assert (model.seq_len, model.window, model.heads, model.k_best) == (16, 8, 2, 2)
    config = portal.project_config()
    skewed = msgspec.structs.replace(config, grids=[config.grids[0], config.grids[0]])
    with pytest.raises(ValueError, match=r"grid 1 \(lm\.b0"):
        project_lm_config(skewed, k_best=2)
    with pytest.raises(ValueError, match="2 blocks but 1 expert grids"):
        project_lm_config(msgspec.structs.replace(config, grids=config.grids[:1]), k_best=2)
    portal.behaviour.lm = None
    with pytest.raises(ValueError, match="does not train a language model"):
        project_lm_config(portal.project_config(), k_best=2)


def test_language_model_points_carry_bits_per_byte() -> None:
    event = MetricsEvent("eval", 10, 2 * math.log(2), 0.4, 0.0, 3, 0, 1.0e9)
    point = metric_point(event, "run1", language_model=True)
    assert point is not None and point.bits_per_byte == pytest.approx(2.0) and point.accuracy == 0.4
    assert metric_point(event, "run1").bits_per_byte is None  # type: ignore[union-attr]
    diverged = MetricsEvent("train", 11, 1e6, 0.0, 5.0, 3, 0, 1.0e9)
    assert metric_point(diverged, "run1", language_model=True).bits_per_byte is None  # type: ignore[union-attr]


def _trainer_args(portal: LocalPortal, data_dir: Path, *extra: str) -> list[str]:
    return ["train", "--portal", portal.url, "--data-dir", str(data_dir), "--no-progress", *extra]


def test_a_trainer_of_a_language_model_project_says_what_it_needs(
    local_portal: LocalPortal, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    local_portal.behaviour.lm = msgspec.structs.replace(SMALL_LM, corpus="own")
    assert main(_trainer_args(local_portal, tmp_path, "--join-code", "CODE-1234")) == 2
    assert "trains on its researcher's own text: give it with --text PATH" in capsys.readouterr().err
    assert main(_trainer_args(local_portal, tmp_path, "--text", str(tmp_path / "missing"))) == 2
    assert "missing" in capsys.readouterr().err
    assert main(_trainer_args(local_portal, tmp_path, "--task", "classification")) == 1
    assert "trains a language model: drop --task classification" in capsys.readouterr().err
    assert main(_trainer_args(local_portal, tmp_path, "--blocks", "3")) == 2
    assert "the project's model has --blocks 2: drop --blocks 3" in capsys.readouterr().err
    local_portal.behaviour.lm = SMALL_LM  # the built-in corpus: every trainer of the project trains on it
    assert main(_trainer_args(local_portal, tmp_path, "--text", str(tmp_path))) == 2
    assert "trains on the built-in corpus" in capsys.readouterr().err
    local_portal.behaviour.lm = None
    assert main(_trainer_args(local_portal, tmp_path, "--task", "lm")) == 1
    assert "trains a classifier: drop --task lm" in capsys.readouterr().err


@pytest.mark.slow
async def test_a_volunteer_serves_every_block_and_the_portal_trainer_trains_the_language_model(
    local_portal: LocalPortal,
    gated_bootstrap: DHTNode,  # noqa: F811
    tmp_path: Path,
) -> None:
    local_portal.behaviour.lm = SMALL_LM
    local_portal.behaviour.codes |= {"TRAIN-CODE"}
    agent_lines: list[str] = []
    agent = await start_agent(
        local_portal.url, "CODE-1234", "--data-dir", str(tmp_path / "node"), "--listen", "127.0.0.1:0",
        "--rtc-loopback-only", "--heartbeat-period", "1", "--announce-period", "1", "--rebalance-after", "60",
    )  # fmt: skip
    trainer = None
    lines: list[str] = []
    try:
        served = await read_until(
            agent, r"serving 4 ffn expert\(s\) of project demo: (.+) \(DHT endpoint", agent_lines
        )
        uids = served.group(1).split(", ")
        assert sorted(uid[:5] for uid in uids) == ["lm.b0", "lm.b0", "lm.b1", "lm.b1"], uids
        trainer = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "node_agent", "train", "--portal", local_portal.url,
            "--join-code", "TRAIN-CODE", "--data-dir", str(tmp_path / "trainer"), "--rtc-loopback-only",
            "--wait-period", "0.5", "--k-best", "1", "--batch-size", "4", "--log-every", "2",
            "--eval-every", "4", "--no-progress", "--heartbeat-period", "1", "--corpus-bytes", "200000",
            cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1"},
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        await read_until(trainer, r"model: 2 blocks x 2x2 experts", lines)
        await read_until(trainer, r"training run [0-9a-f]{16} of project demo until stopped", lines)

        def evaluated() -> bool:
            return any(point["kind"] == "eval" for point in local_portal.metrics)

        assert await wait_until_async(evaluated, timeout=90, interval=0.2), "".join(lines)
        trainer.send_signal(signal.SIGTERM)
        rest, _ = await asyncio.wait_for(trainer.communicate(), 60)
        output = "".join(lines) + rest.decode(errors="replace")
    finally:
        if trainer is not None and trainer.returncode is None:
            trainer.kill()
            await trainer.wait()
        code = await stop_agent(agent, agent_lines)
    assert code == 0, "".join(agent_lines)
    assert trainer.returncode == 0, output
    summary = json.loads(output.strip().splitlines()[-1])
    assert summary["stopped"] is True and summary["steps"] >= 4 and summary["experts_answered"] > 0
    points = local_portal.metrics
    assert len({point["run"] for point in points}) == 1
    assert all(0 < point["bits_per_byte"] < 9 for point in points), points  # below 8 bits once trained
    assert all(point["bits_per_byte"] == pytest.approx(point["loss"] / math.log(2)) for point in points)
    served_beats = [set(h["experts"]) for h in local_portal.heartbeats if h["role"] == "server"]
    assert set(uids) in served_beats
    trainer_beats = [h for h in local_portal.heartbeats if h["role"] == "trainer"]
    assert trainer_beats[-1]["going_offline"] is True and trainer_beats[-1]["samples"] >= 4 * 4 * 16

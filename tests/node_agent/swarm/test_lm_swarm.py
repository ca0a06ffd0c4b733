"""The byte-level LM through a real local swarm (bootstrap + expert server processes): it trains, a server
killed mid-training (SIGKILL) is masked and training goes on, `generate` samples with the swarm's experts,
`export` takes every block's live experts and the trainer's layers home and `evaluate` measures the file."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from node_agent.cli import main
from node_agent.cli.train_lm import save_lm_config
from node_agent.swarm.launcher import LocalSwarm, SwarmConfig
from node_agent.training.lm import LMConfig
from node_agent.training.lm_session import LMSessionConfig, run_lm_training
from node_agent.training.lm_trainer import LMTrainConfig
from node_agent.training.session import SessionConfig, start_caller
from node_agent.training.text import builtin_corpus

pytestmark = pytest.mark.slow
MODEL = LMConfig(hidden_dim=32, blocks=2, grid=(2, 2), seq_len=32, window=16, heads=2, k_best=2)


def test_lm_trains_through_the_swarm_and_survives_a_killed_server(tmp_path: Path, capsys):
    swarm_config = SwarmConfig(
        servers=2, grid=MODEL.grid, uid_prefix="lm.b0 lm.b1", hidden_dim=MODEL.hidden_dim, announce_ttl=20
    )
    corpus = builtin_corpus(max_bytes=100_000)
    with LocalSwarm(swarm_config, output=None) as swarm:
        assert swarm.patterns[0] == "lm.b0.[0:1].[0:2] lm.b1.[0:1].[0:2]"
        caller = start_caller(SessionConfig(initial_peers=[swarm.initial_peer], rtc_loopback_only=True))
        checkpoint = tmp_path / "ck"
        save_lm_config(checkpoint, MODEL)
        try:

            def on_step(step: int) -> None:
                if step == 4:
                    swarm.kill_server(0)

            config = LMSessionConfig(
                model=MODEL,
                mode="remote",
                forward_timeout=5.0,
                timeout_after_k_min=0.5,
                backward_timeout=5.0,
                train=LMTrainConfig(
                    steps=10,
                    batch_size=4,
                    eval_every=0,
                    eval_windows=8,
                    log_every=5,
                    checkpoint_dir=checkpoint,
                ),
            )
            result = run_lm_training(config, corpus, caller=caller, on_step=on_step)
        finally:
            caller.stop()
        assert result.steps == 10 and math.isfinite(result.val_bpb)
        assert (
            result.experts_answered > 0 and result.experts_failed > 0
        )  # the dead server's calls were masked

        capsys.readouterr()
        code = main(
            [
                *["generate", "--checkpoint", str(checkpoint), "--prompt", "def ", "--length", "12"],
                *["--initial-peers", swarm.initial_peer, "--rtc-loopback-only"],
            ]
        )
        out = capsys.readouterr().out
        assert code == 0 and out.startswith("def ") and len(out.encode()) >= 4 + 1

        exported = tmp_path / "lm.safetensors"
        code = main(
            [
                *["export", "--initial-peers", swarm.initial_peer, "--rtc-loopback-only"],
                *["--trainer-checkpoint", str(checkpoint), "--out", str(exported), "--k-best", "2"],
            ]
        )
        summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        # the killed server's cells (one row of each block's grid) are missing; the other's came home
        assert code == 0 and summary["experts"] == 4 and len(summary["missing"]) == 4, summary
        assert {uid[:5] for uid in summary["missing"]} == {"lm.b0", "lm.b1"}
        assert summary["trainer_step"] == 10
    assert main(["evaluate", str(exported), "--corpus-bytes", "100000"]) == 0
    evaluated = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert 0 < evaluated["val_bpb"] < 8.5 and evaluated["experts"] == 4, evaluated
    assert evaluated["corpus"] == corpus.name

"""Train the same byte-level Transformer LM three ways on the built-in corpus and print one JSON object.

1. `local`: every block's experts in-process (the baseline);
2. `swarm`: each block's MoE layer over a local swarm of expert servers (real processes, WebRTC on 127.0.0.1,
   every server hosting its share of every block's grid);
3. `swarm_with_failure`: a fresh swarm of the same size, one server SIGKILLed halfway through training.

Same seed, same trainer initialisation, same batches, same validation windows. Validation bits per byte are
measured after the last step; `unigram_bpb` is the corpus's byte-frequency baseline. Targets (issue 16): both
swarm runs within 5% of local, all clearly below `unigram_bpb`. Loopback only: an Internet volunteer's
round trips would lower `swarm_tokens_per_s`, not change the bits per byte.

    .venv/bin/python benchmarks/bench_lm.py [--steps 60] [--batch-size 4] [--blocks 2] [--grid 4x4]
        [--hidden-dim 256] [--seq-len 128] [--servers 4] [--compression blockwise8] [--runs local,swarm,...]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from node_agent.moe.client import ExpertCaller
from node_agent.rtc.config import RTCOptions
from node_agent.swarm.launcher import LocalSwarm, SwarmConfig
from node_agent.training.lm import LMConfig, block_prefix, grid_parameters
from node_agent.training.lm_session import LMSessionConfig, run_lm_training
from node_agent.training.lm_trainer import LMTrainConfig, LMTrainResult
from node_agent.training.models import parse_grid
from node_agent.training.text import TextCorpus, builtin_corpus, unigram_bpb


def session(args: argparse.Namespace, mode: str) -> LMSessionConfig:
    return LMSessionConfig(
        model=LMConfig(
            hidden_dim=args.hidden_dim,
            blocks=args.blocks,
            grid=args.grid,
            seq_len=args.seq_len,
            window=args.window,
            k_best=args.k_best,
        ),
        mode=mode,  # type: ignore[arg-type]
        k_min=1,
        forward_timeout=args.timeout,
        backward_timeout=args.timeout,
        timeout_after_k_min=0.5,
        seed=args.seed,
        train=LMTrainConfig(
            steps=args.steps,
            batch_size=args.batch_size,
            learning_rate=args.lr,
            eval_every=0,
            eval_windows=args.eval_windows,
            seed=args.seed,
        ),
    )


def swarm_run(
    args: argparse.Namespace, corpus: TextCorpus, kill_halfway: bool
) -> tuple[LMTrainResult, float]:
    config = SwarmConfig(
        servers=args.servers,
        grid=args.grid,
        uid_prefix=" ".join(block_prefix("lm", block) for block in range(args.blocks)),
        hidden_dim=args.hidden_dim,
        lr=args.lr,
        seed=args.seed,
        announce_ttl=30,
        announce_period=10,
        verbose=False,
        extra_serve_args=("--replica-period", "0"),
    )
    with LocalSwarm(config, output=None) as swarm:
        caller = ExpertCaller.start_caller(
            [swarm.initial_peer], rtc_options=RTCOptions.for_loopback(), compression=args.compression
        )

        def on_step(step: int) -> None:
            if kill_halfway and step == args.steps // 2:
                swarm.kill_server(args.servers - 1)

        try:
            started = time.monotonic()
            result = run_lm_training(session(args, "remote"), corpus, caller=caller, on_step=on_step)
            return result, time.monotonic() - started
        finally:
            caller.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--blocks", type=int, default=2)
    parser.add_argument("--grid", type=parse_grid, default=(4, 4))
    parser.add_argument("--hidden-dim", type=int, default=256)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--window", type=int, default=64)
    parser.add_argument("--k-best", type=int, default=4)
    parser.add_argument("--servers", type=int, default=4)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--timeout", type=float, default=5.0, help="forward/backward timeout (s)")
    parser.add_argument("--compression", default="blockwise8", help="hidden states on the wire")
    parser.add_argument("--corpus-bytes", type=int, default=2_000_000)
    parser.add_argument("--eval-windows", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the trainer")
    parser.add_argument("--runs", default="local,swarm,swarm_with_failure", help="comma-separated runs")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    import torch

    torch.set_num_threads(args.threads)
    corpus = builtin_corpus(args.corpus_bytes)
    runs = set(args.runs.split(","))
    results: dict[str, tuple[LMTrainResult, float]] = {}
    if "local" in runs:
        started = time.monotonic()
        results["local"] = run_lm_training(session(args, "local"), corpus), time.monotonic() - started
    if "swarm" in runs:
        results["swarm"] = swarm_run(args, corpus, kill_halfway=False)
    if "swarm_with_failure" in runs:
        results["swarm_with_failure"] = swarm_run(args, corpus, kill_halfway=True)
    per_expert, total = grid_parameters(session(args, "local").model)
    report: dict[str, object] = {
        "corpus": corpus.describe(),
        "unigram_bpb": round(unigram_bpb(corpus.train, corpus.validation), 4),
        "steps": args.steps,
        "batch_size": args.batch_size,
        "tokens_per_step": args.batch_size * args.seq_len,
        "blocks": args.blocks,
        "grid": "x".join(map(str, args.grid)),
        "hidden_dim": args.hidden_dim,
        "seq_len": args.seq_len,
        "servers": args.servers,
        "k_best": args.k_best,
        "compression": args.compression,
        "expert_parameters": total,
        "parameters_per_expert": per_expert,
    }
    for name, (result, wall) in results.items():
        report[f"{name}_val_bpb"] = round(result.val_bpb, 4)
        report[f"{name}_tokens_per_s"] = round(result.tokens_per_s, 1)
        report[f"{name}_train_s"] = round(wall, 1)
        if name != "local":
            report[f"{name}_failed_steps"] = result.failed_steps
            report[f"{name}_experts_answered"] = result.experts_answered
            report[f"{name}_experts_failed"] = result.experts_failed
    if "local" in results:
        local = results["local"][0].val_bpb
        swarm = [results[n][0].val_bpb for n in ("swarm", "swarm_with_failure") if n in results]
        if swarm:
            report["target_met"] = max(swarm) <= 1.05 * local and max(swarm) < report["unigram_bpb"]  # type: ignore[operator]
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

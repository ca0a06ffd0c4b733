"""Train the same MoE classifier on digits three ways and print one JSON object.

1. `local`: every expert in-process (the baseline);
2. `swarm`: the MoE layer over a local swarm of expert servers (real processes, WebRTC on 127.0.0.1);
3. `swarm_with_failure`: a fresh swarm of the same size, one server SIGKILLed halfway through training.

Same seed, same steps, same held-out split for all three; accuracy is measured on the held-out set after
the last step. Target (issue 5): both swarm accuracies >= 0.9 and within 2 points of the local one.

    .venv/bin/python benchmarks/bench_training.py [--steps 300] [--servers 4] [--grid 4x4] [--hidden-dim 64]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from node_agent.swarm.launcher import LocalSwarm, SwarmConfig
from node_agent.training.models import parse_grid
from node_agent.training.session import SessionConfig, run_training
from node_agent.training.trainer import TrainConfig, TrainResult


def session(args: argparse.Namespace, mode: str, initial_peers: list[str] | None = None) -> SessionConfig:
    return SessionConfig(
        dataset="digits",
        hidden_dim=args.hidden_dim,
        grid=args.grid,
        mode=mode,  # type: ignore[arg-type]
        k_best=args.k_best,
        k_min=1,
        forward_timeout=args.timeout,
        backward_timeout=args.timeout,
        timeout_after_k_min=0.5,
        initial_peers=initial_peers or [],
        rtc_loopback_only=True,
        seed=args.seed,
        train=TrainConfig(
            steps=args.steps, batch_size=args.batch_size, learning_rate=args.lr, eval_every=0, seed=args.seed
        ),
    )


def swarm_run(args: argparse.Namespace, kill_halfway: bool) -> tuple[TrainResult, float]:
    config = SwarmConfig(
        servers=args.servers,
        grid=args.grid,
        hidden_dim=args.hidden_dim,
        lr=args.lr,
        seed=args.seed,
        announce_ttl=30,
        announce_period=10,
        verbose=False,
    )
    with LocalSwarm(config, output=None) as swarm:

        def on_step(step: int) -> None:
            if kill_halfway and step == args.steps // 2:
                swarm.kill_server(args.servers - 1)

        started = time.monotonic()
        result = run_training(session(args, "remote", [swarm.initial_peer]), on_step=on_step)
        return result, time.monotonic() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--servers", type=int, default=4)
    parser.add_argument("--grid", type=parse_grid, default=(4, 4))
    parser.add_argument("--hidden-dim", type=int, default=64)
    parser.add_argument("--k-best", type=int, default=4)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--timeout", type=float, default=3.0, help="forward/backward timeout (s)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)

    started = time.monotonic()
    local = run_training(session(args, "local"))
    local_wall = time.monotonic() - started
    swarm, swarm_wall = swarm_run(args, kill_halfway=False)
    failure, failure_wall = swarm_run(args, kill_halfway=True)
    report = {
        "dataset": "digits",
        "steps": args.steps,
        "batch_size": args.batch_size,
        "servers": args.servers,
        "grid": "x".join(map(str, args.grid)),
        "hidden_dim": args.hidden_dim,
        "k_best": args.k_best,
        "local_accuracy": round(local.final_accuracy, 4),
        "swarm_accuracy": round(swarm.final_accuracy, 4),
        "swarm_with_failure_accuracy": round(failure.final_accuracy, 4),
        "local_samples_per_s": round(local.samples_per_s, 1),
        "swarm_samples_per_s": round(swarm.samples_per_s, 1),
        "swarm_with_failure_samples_per_s": round(failure.samples_per_s, 1),
        "swarm_failed_steps": swarm.failed_steps,
        "swarm_with_failure_failed_steps": failure.failed_steps,
        "swarm_experts_answered": swarm.experts_answered,
        "swarm_experts_failed": swarm.experts_failed,
        "swarm_with_failure_experts_answered": failure.experts_answered,
        "swarm_with_failure_experts_failed": failure.experts_failed,
        "local_train_s": round(local_wall, 1),
        "swarm_train_s": round(swarm_wall, 1),
        "swarm_with_failure_train_s": round(failure_wall, 1),
        "target_met": min(swarm.final_accuracy, failure.final_accuracy) >= 0.9
        and max(local.final_accuracy - swarm.final_accuracy, local.final_accuracy - failure.final_accuracy)
        <= 0.02,
    }
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""`node-agent train`: train a model whose MoE layer runs on the swarm's experts (or locally, `--local`)."""

from __future__ import annotations

import argparse


def _peers(text: str) -> list[str]:
    return [p for p in text.split(",") if p]


def register(subparsers: argparse._SubParsersAction) -> None:
    from node_agent.training.datasets import DATASETS

    parser = subparsers.add_parser(
        "train",
        help="train a model with a decentralized Mixture-of-Experts layer",
        description="Train a classifier (local layers + one MoE layer over the expert grid) on a bundled "
        "dataset; prints progress, streams metrics as JSON lines and ends with a JSON summary.",
    )
    parser.add_argument(
        "--initial-peers", action="extend", type=_peers, default=[], help="HOST:PORT of the swarm"
    )
    parser.add_argument("--dataset", default="digits", choices=sorted(DATASETS))
    parser.add_argument("--grid", default="4x4", help="expert grid, e.g. 4x4 (default %(default)s)")
    parser.add_argument("--uid-prefix", default="ffn", help="grid name of the experts (default %(default)s)")
    parser.add_argument("--expert-class", default="ffn", help="expert architecture for --local")
    parser.add_argument("--hidden-dim", type=int, default=64)
    parser.add_argument("--local", action="store_true", help="in-process experts, no swarm (a baseline)")
    parser.add_argument("--switch", action="store_true", help="switch routing: one expert per sample")
    parser.add_argument("--k-best", type=int, default=4)
    parser.add_argument("--k-min", type=int, default=1)
    parser.add_argument("--backward-k-min", type=int, default=1)
    parser.add_argument("--forward-timeout", type=float, default=10.0)
    parser.add_argument("--timeout-after-k-min", type=float, default=1.0)
    parser.add_argument("--backward-timeout", type=float, default=10.0)
    parser.add_argument("--allow-zero-outputs", action="store_true")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3, help="learning rate of the trainer's own layers")
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--log-every", type=int, default=10)
    parser.add_argument("--max-failed-steps", type=int, default=20)
    parser.add_argument(
        "--metrics-file", default=None, help="append metrics as JSON lines here ('-': stdout)"
    )
    parser.add_argument("--checkpoint-dir", default=None, help="save the trainer's parameters here")
    parser.add_argument("--checkpoint-every", type=int, default=0)
    parser.add_argument("--resume", action="store_true", help="continue from the latest checkpoint")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--rtc-loopback-only", action="store_true", help="offer only 127.0.0.1 (one machine)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import json
    import logging
    import sys

    from node_agent.moe.api import ExpertError
    from node_agent.training.metrics import JsonLinesSink, MetricsStream
    from node_agent.training.models import parse_grid
    from node_agent.training.session import SessionConfig, run_training
    from node_agent.training.trainer import TrainConfig, TrainingError

    log = logging.getLogger("node_agent.cli.train")
    if not args.local and not args.initial_peers:
        print("error: --initial-peers is required unless --local", file=sys.stderr)
        return 2
    try:
        config = SessionConfig(
            dataset=args.dataset,
            hidden_dim=args.hidden_dim,
            grid=parse_grid(args.grid),
            uid_prefix=args.uid_prefix,
            expert_class=args.expert_class,
            mode="local" if args.local else "remote",
            layer="switch" if args.switch else "mixture",
            k_best=args.k_best,
            k_min=args.k_min,
            backward_k_min=args.backward_k_min,
            forward_timeout=args.forward_timeout,
            timeout_after_k_min=args.timeout_after_k_min,
            backward_timeout=args.backward_timeout,
            allow_zero_outputs=args.allow_zero_outputs,
            initial_peers=args.initial_peers,
            rtc_loopback_only=args.rtc_loopback_only,
            resume_from=args.checkpoint_dir if args.resume else None,
            seed=args.seed,
            train=TrainConfig(
                steps=args.steps,
                batch_size=args.batch_size,
                learning_rate=args.lr,
                eval_every=args.eval_every,
                log_every=args.log_every,
                max_failed_steps=args.max_failed_steps,
                checkpoint_dir=args.checkpoint_dir,
                checkpoint_every=args.checkpoint_every,
                seed=args.seed,
                progress=not args.no_progress,
            ),
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    metrics = MetricsStream()
    if args.metrics_file:
        metrics.subscribe(JsonLinesSink(args.metrics_file))
    try:
        result = run_training(config, metrics)
    except (TrainingError, ExpertError, ValueError, OSError) as exc:
        log.error("training failed: %s", exc)
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        metrics.close()
    summary = {
        "steps": result.steps,
        "failed_steps": result.failed_steps,
        "accuracy": result.final_accuracy,
        "loss": result.final_loss,
        "samples_per_s": result.samples_per_s,
        "experts_answered": result.experts_answered,
        "experts_failed": result.experts_failed,
    }
    print(json.dumps(summary), flush=True)
    return 0

"""`node-agent train --task lm`: the byte-level Transformer LM (one MoE grid per block) on text.

The built-in corpus (the Python standard library's sources) or `--text PATH`; prints progress and the
validation bits per byte, ends with a JSON summary. With `--checkpoint-dir` it also writes `lm.json` (the
model's shape) there, which `node-agent generate` reads.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

LM_CONFIG_FILE = "lm.json"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("language model (--task lm)")
    group.add_argument(
        "--text", default=None, help="your own UTF-8 text: a file or a folder (default: built-in)"
    )
    group.add_argument(
        "--corpus-bytes", type=int, default=4_000_000, help="training bytes of the built-in corpus to use"
    )
    group.add_argument("--blocks", type=int, default=2, help="Transformer blocks, one expert grid each")
    group.add_argument("--seq-len", type=int, default=128)
    group.add_argument("--window", type=int, default=64, help="local attention window (bytes)")
    group.add_argument("--heads", type=int, default=4)


def save_lm_config(directory: str | Path, config) -> None:  # config: LMConfig
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    (path / LM_CONFIG_FILE).write_text(json.dumps(asdict(config)))


def load_lm_config(checkpoint: str | Path):  # -> LMConfig
    from node_agent.training.lm import LMConfig

    path = Path(checkpoint)
    directory = path if path.is_dir() else path.parent
    data = json.loads((directory / LM_CONFIG_FILE).read_text())
    data["grid"] = tuple(int(n) for n in data["grid"])
    return LMConfig(**data)


def run_lm(args: argparse.Namespace) -> int:
    from node_agent.moe.api import ExpertError
    from node_agent.training.lm import LMConfig, grid_parameters
    from node_agent.training.lm_session import LMSessionConfig, run_lm_training
    from node_agent.training.lm_trainer import LMTrainConfig
    from node_agent.training.metrics import JsonLinesSink, MetricsStream
    from node_agent.training.models import parse_grid
    from node_agent.training.session import SessionConfig, start_caller
    from node_agent.training.text import TextDataError, load_corpus, unigram_bpb
    from node_agent.training.trainer import TrainingError

    if args.portal or args.join_code or args.credential_file:
        print("error: --task lm does not report to a portal yet; train it against the swarm", file=sys.stderr)
        return 2
    if getattr(args, "collaborative", False):
        print("error: --task lm trains with one trainer (no --collaborative yet)", file=sys.stderr)
        return 2
    if not args.local and not args.initial_peers:
        print("error: --initial-peers is required unless --local", file=sys.stderr)
        return 2
    grids = (args.uid_prefix or "lm").split()
    if len(grids) > 1:  # a local swarm's grid list (`lm.b0 lm.b1`): the model's name is what precedes `.b<k>`
        args.uid_prefix = grids[0].rsplit(".b", 1)[0]
        if args.blocks != len(grids):
            print(f"error: {len(grids)} grids for --blocks {args.blocks}", file=sys.stderr)
            return 2
    try:
        model = LMConfig(
            hidden_dim=args.hidden_dim or 256,
            blocks=args.blocks,
            grid=parse_grid(args.grid or "4x4"),
            seq_len=args.seq_len,
            window=args.window,
            heads=args.heads,
            uid_prefix=args.uid_prefix or "lm",
            expert_class=args.expert_class or "ffn",
            k_best=args.k_best,
        )
        corpus = load_corpus(args.text, args.corpus_bytes)
    except (TextDataError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    per_expert, total = grid_parameters(model)
    baseline = unigram_bpb(corpus.train, corpus.validation)
    grid = "x".join(map(str, model.grid))
    print(
        f"{corpus.describe()}; unigram baseline {baseline:.3f} bits/byte\n"
        f"model: {model.blocks} blocks x {grid} experts of {per_expert:,} parameters = {total:,} in all",
        flush=True,
    )
    config = LMSessionConfig(
        model=model,
        mode="local" if args.local else "remote",
        k_min=args.k_min,
        backward_k_min=args.backward_k_min,
        forward_timeout=args.forward_timeout,
        timeout_after_k_min=args.timeout_after_k_min,
        backward_timeout=args.backward_timeout,
        resume_from=args.checkpoint_dir if args.resume else None,
        seed=args.seed,
        train=LMTrainConfig(
            steps=args.steps if args.steps is not None else 300,
            batch_size=args.batch_size or 16,
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
    if args.checkpoint_dir:
        save_lm_config(args.checkpoint_dir, model)
    metrics = MetricsStream()
    if args.metrics_file:
        metrics.subscribe(JsonLinesSink(args.metrics_file))
    caller = None
    try:
        if not args.local:
            caller = start_caller(
                SessionConfig(initial_peers=args.initial_peers, rtc_loopback_only=args.rtc_loopback_only)
            )
        result = run_lm_training(config, corpus, metrics, caller)
    except (TrainingError, ExpertError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        metrics.close()
        if caller is not None:
            caller.stop()
    print(json.dumps({**asdict(result), "expert_parameters": total}), flush=True)
    return 0

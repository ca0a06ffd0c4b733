"""`node-agent generate`: sample text from a trained byte-level LM (`node-agent train --task lm`).

The trainer's checkpoint holds its own layers; a model trained with `--local` also holds its experts there,
one trained on the swarm asks the swarm's experts (`--initial-peers`). `--export FILE` samples from a file
written by `node-agent export` instead (every block's experts and the trainer's layers, no swarm needed).
"""

from __future__ import annotations

import argparse

from node_agent.cli import peer_list


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "generate",
        help="sample text from a trained language model",
        description="Continue --prompt with bytes sampled from a `train --task lm` checkpoint.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="checkpoint directory (or a step-*.safetensors)")
    source.add_argument("--export", help="a language model's file written by `node-agent export`")
    parser.add_argument("--prompt", default="def ")
    parser.add_argument("--length", type=int, default=200, help="bytes to generate")
    parser.add_argument("--temperature", type=float, default=0.8, help="0: always the likeliest byte")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--initial-peers", action="extend", type=peer_list, default=[], help="HOST:PORT of the swarm"
    )
    parser.add_argument("--rtc-loopback-only", action="store_true", help="offer only 127.0.0.1 (one machine)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import sys
    from pathlib import Path

    from safetensors import safe_open

    from node_agent.cli.train_lm import load_lm_config
    from node_agent.moe.api import ExpertError
    from node_agent.training.checkpoints import latest_checkpoint, load_checkpoint
    from node_agent.training.lm_session import LMSessionConfig, build_lm
    from node_agent.training.session import SessionConfig, start_caller
    from node_agent.training.text import decode

    if args.export:
        return _generate_from_export(args)
    path = Path(args.checkpoint)
    found = latest_checkpoint(path) if path.is_dir() else path
    if found is None or not found.is_file():
        print(f"error: no checkpoint at {path}", file=sys.stderr)
        return 2
    try:
        model_config = load_lm_config(path)
        with safe_open(str(found), framework="pt") as handle:
            local = any(".experts." in key for key in handle.keys())  # noqa: SIM118 (safe_open has no __iter__)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        print(f"error: {found} is not a language-model checkpoint: {exc}", file=sys.stderr)
        return 2
    if not local and not args.initial_peers:
        print("error: this model's experts live on the swarm: give --initial-peers", file=sys.stderr)
        return 2
    caller = None
    try:
        if not local:
            caller = start_caller(
                SessionConfig(initial_peers=args.initial_peers, rtc_loopback_only=args.rtc_loopback_only)
            )
        model = build_lm(LMSessionConfig(model=model_config, mode="local" if local else "remote"), caller)
        load_checkpoint(found, model)
        model.eval()
        sampled = _sample(model, args)
    except (ExpertError, ValueError, OSError, RuntimeError) as exc:  # RuntimeError: tensors do not fit
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        if caller is not None:
            caller.stop()
    print(args.prompt + decode(sampled), flush=True)
    return 0


def _sample(model, args: argparse.Namespace):  # (ByteTransformerLM, ...) -> Tensor
    """`--length` bytes after `--prompt` (a newline when it is empty)."""
    import torch

    from node_agent.training.text import encode

    model.eval()
    prompt = encode(args.prompt)
    if len(prompt) == 0:
        prompt = encode("\n")
    generator = torch.Generator().manual_seed(args.seed)
    return model.generate(prompt, args.length, args.temperature, generator)


def _generate_from_export(args: argparse.Namespace) -> int:
    import sys

    from node_agent.training.export import ExportError, build_exported_lm
    from node_agent.training.text import decode

    try:
        model, _ = build_exported_lm(args.export)
        sampled = _sample(model, args)
    except (ExportError, ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(args.prompt + decode(sampled), flush=True)
    return 0

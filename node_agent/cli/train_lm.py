"""`node-agent train --task lm`: the byte-level Transformer LM (one MoE grid per block) on text.

The built-in corpus (the Python standard library's sources) or `--text PATH`; prints progress and the
validation bits per byte, ends with a JSON summary. With `--checkpoint-dir` it also writes `lm.json` (the
model's shape) there, which `node-agent generate` reads.

For a portal project whose task is `lm` (`node-agent train --portal URL --join-code CODE`, no `--task`
needed) the project fixes the model's shape (`ProjectConfig.lm` and its grids) and the corpus (`own`: the
researcher's `--text`, which never leaves this computer); reporting, waiting for peers and experts, training
until stopped and the "going offline" heartbeat are the classifier's (`train.run_trainer`).
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
    group.add_argument(
        "--blocks", type=int, default=None, help="Transformer blocks, one expert grid each (default 2)"
    )
    group.add_argument("--seq-len", type=int, default=None, help="bytes per training window (default 128)")
    group.add_argument(
        "--window", type=int, default=None, help="local attention window in bytes (default 64)"
    )
    group.add_argument("--heads", type=int, default=None, help="attention heads (default 4)")


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


#: The model's shape options and their defaults when no portal project fixes them.
SHAPE_DEFAULTS = {"blocks": 2, "seq_len": 128, "window": 64, "heads": 4, "hidden_dim": 256, "grid": "4x4"}


def project_lm_config(project, k_best: int):  # (ProjectConfig, int) -> LMConfig
    """The language model a portal project trains: `lm` (blocks, sequence, attention) and its grids, one per
    block named `<model>.b<k>` (`training.lm.block_prefix`), all of the same size, width and expert class."""
    from node_agent.training.lm import LMConfig, block_prefix

    spec = project.lm
    if project.task != "lm" or spec is None:
        raise ValueError(f"project {project.project} does not train a language model")
    grids = project.expert_grids
    first = grids[0]
    name = first.prefix.rsplit(".b", 1)[0]
    if len(grids) != spec.blocks:
        raise ValueError(f"project {project.project} has {spec.blocks} blocks but {len(grids)} expert grids")
    for block, grid in enumerate(grids):
        shape = (grid.grid, grid.hidden_dim, grid.expert_class)
        same = shape == (first.grid, first.hidden_dim, first.expert_class)
        if grid.prefix != block_prefix(name, block) or not same:
            raise ValueError(
                f"project {project.project}: grid {block} ({grid.prefix}, {grid.grid}, width "
                f"{grid.hidden_dim}, {grid.expert_class}) is not block {block} of model {name} like grid 0"
            )
    return LMConfig(
        hidden_dim=first.hidden_dim,
        blocks=spec.blocks,
        grid=tuple(first.grid),
        seq_len=spec.seq_len,
        window=spec.window,
        heads=spec.heads,
        uid_prefix=name,
        expert_class=first.expert_class,
        k_best=k_best,
    )


def _check_project_shape(args: argparse.Namespace, model) -> None:  # model: LMConfig
    """The project fixes the model's shape (volunteers host its experts): options may only repeat it."""
    fixed = {
        "blocks": model.blocks,
        "seq_len": model.seq_len,
        "window": model.window,
        "heads": model.heads,
        "hidden_dim": model.hidden_dim,
        "grid": "x".join(map(str, model.grid)),
        "uid_prefix": model.uid_prefix,
        "expert_class": model.expert_class,
    }
    for name, value in fixed.items():
        given = getattr(args, name)
        if given is not None and str(given) != str(value):
            option = "--" + name.replace("_", "-")
            raise ValueError(f"the project's model has {option} {value}: drop {option} {given}")


def _corpus_source(args: argparse.Namespace, project) -> str | None:
    """The text a portal project trains on: the built-in corpus (None) or, for `own`, `--text`."""
    corpus = project.lm.corpus
    if corpus == "own" and not args.text:
        raise ValueError(
            f"project {project.project} trains on its researcher's own text: give it with --text PATH "
            "(a UTF-8 file or folder; it stays on this computer, volunteers see only hidden states)"
        )
    if corpus == "python-stdlib" and args.text:
        raise ValueError(
            f"project {project.project} trains on the built-in corpus (the Python standard library's "
            "sources), like its other trainers: drop --text"
        )
    return args.text


def run_lm(args: argparse.Namespace, portal=None) -> int:  # portal: (AgentState, Identity) | None
    """Train the LM standalone (`--local` or `--initial-peers`) or for a portal project (its shape, corpus
    and swarm; metrics with bits per byte and heartbeats go to the portal, through `train.run_trainer`)."""
    from node_agent.cli.train import _ice_servers, collaborative_config, run_trainer
    from node_agent.portal.project_config import parse_project_config
    from node_agent.training.lm import grid_parameters
    from node_agent.training.lm_session import LMSessionConfig, run_lm_training
    from node_agent.training.lm_trainer import LMTrainConfig, LMTrainResult
    from node_agent.training.session import SessionConfig
    from node_agent.training.text import TextDataError, load_corpus, unigram_bpb

    if not args.local and not args.initial_peers and portal is None:
        print("error: --initial-peers is required unless --local or --portal", file=sys.stderr)
        return 2
    if args.collaborative and not args.initial_peers and portal is None:
        print("error: --collaborative needs the DHT: --initial-peers or --portal", file=sys.stderr)
        return 2
    try:
        if portal is not None:
            project = parse_project_config(portal[0].config)
            model = project_lm_config(project, args.k_best)
            _check_project_shape(args, model)
            text = _corpus_source(args, project)
            if not args.initial_peers:  # may stay empty: a new project lists peers once a server heartbeats
                args.initial_peers = list(project.bootstrap_peers)
        else:
            model = _standalone_lm_config(args)
            text = args.text
        corpus = load_corpus(text, args.corpus_bytes)
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
    batch_size = args.batch_size or 16
    steps = args.steps if args.steps is not None or portal is not None else 300
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
        collaborative=collaborative_config(args, portal),
        train=LMTrainConfig(
            steps=steps,
            batch_size=batch_size,
            learning_rate=args.lr,
            eval_every=args.eval_every,
            log_every=args.log_every,
            max_failed_steps=args.max_failed_steps,
            checkpoint_dir=args.checkpoint_dir,
            checkpoint_every=args.checkpoint_every,
            seed=args.seed,
            progress=not args.no_progress,
            expert_wait_period=args.wait_period if portal is not None else 0.0,
        ),
    )
    swarm = SessionConfig(
        mode=config.mode,
        collaborative=config.collaborative,
        initial_peers=args.initial_peers,
        rtc_loopback_only=args.rtc_loopback_only,
        listen=args.listen,
        ice_servers=_ice_servers(args, portal[0] if portal is not None else None),
    )
    if args.checkpoint_dir:
        save_lm_config(args.checkpoint_dir, model)
    result = run_trainer(
        args,
        portal,
        swarm,
        lambda metrics, caller, stop, say, on_collaborative: run_lm_training(
            config, corpus, metrics, caller, stop=stop, say=say, on_collaborative=on_collaborative
        ),
        items_per_step=batch_size * model.seq_len,
        language_model=True,
    )
    if not isinstance(result, LMTrainResult):
        return int(result)
    print(json.dumps({**asdict(result), "expert_parameters": total}), flush=True)
    return 0


def _standalone_lm_config(args: argparse.Namespace):  # -> LMConfig
    """The LM of the command line (a local swarm's grid list `lm.b0 lm.b1` names the model `lm`)."""
    from node_agent.training.lm import LMConfig
    from node_agent.training.models import parse_grid

    for name, default in SHAPE_DEFAULTS.items():
        if getattr(args, name) is None:
            setattr(args, name, default)
    grids = (args.uid_prefix or "lm").split()
    if len(grids) > 1:  # a local swarm's grid list (`lm.b0 lm.b1`): the model's name is what precedes `.b<k>`
        args.uid_prefix = grids[0].rsplit(".b", 1)[0]
        if args.blocks != len(grids):
            raise ValueError(f"{len(grids)} grids for --blocks {args.blocks}")
    return LMConfig(
        hidden_dim=args.hidden_dim,
        blocks=args.blocks,
        grid=parse_grid(args.grid),
        seq_len=args.seq_len,
        window=args.window,
        heads=args.heads,
        uid_prefix=args.uid_prefix or "lm",
        expert_class=args.expert_class or "ffn",
        k_best=args.k_best,
    )

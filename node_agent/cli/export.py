"""`node-agent export` and `node-agent evaluate`: take the swarm's model home and measure it locally."""

from __future__ import annotations

import argparse

from node_agent.cli import peer_list


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export",
        help="gather every expert's newest state (and a trainer's layers) into one safetensors file",
        description="Download the newest state of every expert of the grid from live replicas, add the "
        "trainer's own layers from its checkpoint, write one safetensors file with a manifest.",
    )
    parser.add_argument("--out", required=True, help="where to write the .safetensors file")
    parser.add_argument("--portal", default=None, help="portal URL: read peers and grid from the project")
    parser.add_argument("--project", default=None, help="project slug (with --portal)")
    parser.add_argument(
        "--initial-peers", action="extend", type=peer_list, default=[], help="HOST:PORT of the swarm"
    )
    parser.add_argument("--grid", default=None, help="expert grid, e.g. 4x4 (default: project's)")
    parser.add_argument("--uid-prefix", default=None)
    parser.add_argument("--expert-class", default=None)
    parser.add_argument("--hidden-dim", type=int, default=None)
    parser.add_argument("--dataset", default=None, help="dataset the model is evaluated on (default: digits)")
    parser.add_argument("--k-best", type=int, default=4)
    parser.add_argument(
        "--trainer-checkpoint", default=None, help="the trainer's --checkpoint-dir (or one of its files)"
    )
    parser.add_argument("--rtc-loopback-only", action="store_true", help="offer only 127.0.0.1 (one machine)")
    upload = parser.add_argument_group("upload to the portal (the project owner's agent)")
    upload.add_argument("--upload", action="store_true", help="upload the file for the dashboard's download")
    upload.add_argument("--credential-file", default=None, help="agent.json saved by an earlier join")
    upload.add_argument("--data-dir", default=None, help="identity and credential directory")
    upload.add_argument("--join-code", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds for the whole gathering")
    parser.set_defaults(handler=run_export)

    evaluate = subparsers.add_parser(
        "evaluate",
        help="evaluate an exported model locally on its project's dataset",
        description="Rebuild the exported model with in-process experts and print its held-out accuracy "
        "(a language model: its validation bits per byte).",
    )
    evaluate.add_argument("path", help="a file written by `node-agent export`")
    evaluate.add_argument("--seed", type=int, default=0, help="dataset split seed (the trainer's --seed)")
    evaluate.add_argument(
        "--text", default=None, help="a language model's validation text: its own data (default: built-in)"
    )
    evaluate.add_argument(
        "--corpus-bytes", type=int, default=4_000_000, help="training bytes of the built-in corpus to read"
    )
    evaluate.set_defaults(handler=run_evaluate)


def _spec(args: argparse.Namespace):  # -> ExportSpec
    from node_agent.training.export import ExportSpec
    from node_agent.training.models import parse_grid

    if args.portal:
        from node_agent.portal.client import PortalClient
        from node_agent.portal.project_config import parse_project_config

        if not args.project:
            raise ValueError("--portal needs --project")
        project = parse_project_config(PortalClient(args.portal).project_config(args.project))
        args.initial_peers = args.initial_peers or list(project.bootstrap_peers)
        if project.task == "lm" and project.lm is not None:  # every block's grid, the project's shape
            from node_agent.cli.train_lm import project_lm_config

            if not args.initial_peers:
                raise ValueError("the project lists no peer: give --initial-peers")
            return ExportSpec.for_lm(project_lm_config(project, args.k_best), project.lm.corpus)
        args.grid = args.grid or "x".join(str(n) for n in project.expert.grid)
        args.uid_prefix = args.uid_prefix or project.expert.prefix
        args.expert_class = args.expert_class or project.expert.expert_class
        args.hidden_dim = args.hidden_dim or project.expert.hidden_dim
        args.dataset = args.dataset or project.training.dataset
    if not args.initial_peers:
        raise ValueError("give --initial-peers or --portal URL --project SLUG")
    lm_shape = _trainer_lm_shape(args.trainer_checkpoint)
    if lm_shape is not None:  # a language model's trainer (`train --task lm --checkpoint-dir`)
        return ExportSpec.for_lm(lm_shape)
    return ExportSpec(
        grid=parse_grid(args.grid or "4x4"),
        uid_prefix=args.uid_prefix or "ffn",
        expert_class=args.expert_class or "ffn",
        hidden_dim=args.hidden_dim or 64,
        dataset=args.dataset or "digits",
        k_best=args.k_best,
    )


def _trainer_lm_shape(checkpoint: str | None):  # -> LMConfig | None
    """The language model a trainer checkpoint directory describes (its `lm.json`), if any."""
    from pathlib import Path

    from node_agent.cli.train_lm import LM_CONFIG_FILE, load_lm_config

    if not checkpoint:
        return None
    path = Path(checkpoint)
    directory = path if path.is_dir() else path.parent
    if not (directory / LM_CONFIG_FILE).is_file():
        return None
    try:
        return load_lm_config(directory)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{directory / LM_CONFIG_FILE} is not a language model's shape: {exc}") from exc


def run_export(args: argparse.Namespace) -> int:
    import json

    from node_agent.moe.client import ExpertCaller
    from node_agent.moe.server.replicas import ReplicaFinder
    from node_agent.portal.client import PortalError
    from node_agent.portal.errors import ProtocolError
    from node_agent.rtc.config import RTCOptions
    from node_agent.training.export import (
        ExportError,
        Manifest,
        gather_experts,
        trainer_tensors,
        write_export,
    )

    try:
        spec = _spec(args)
    except (ValueError, PortalError, ProtocolError) as exc:
        print(f"error: {exc}", flush=True)
        return 2
    rtc = RTCOptions.for_loopback() if args.rtc_loopback_only else RTCOptions(loopback=True)
    caller = ExpertCaller.start_caller(args.initial_peers, rtc_options=rtc)
    try:

        async def gather():  # on the caller's loop, which owns its DHT node and connection pool
            assert caller.dht is not None and caller.pool is not None
            finder = ReplicaFinder(caller.dht, caller.pool)
            return await gather_experts(finder, spec, spec.uids())

        tensors, cells, missing = caller.run(gather()).result(args.timeout)
    finally:
        caller.stop()
    manifest = Manifest(spec=spec, cells=cells, missing=missing)
    try:
        if args.trainer_checkpoint:
            own, manifest.trainer_step = trainer_tensors(args.trainer_checkpoint)
            tensors.update(own)
        path = write_export(args.out, tensors, manifest)
    except (ExportError, OSError) as exc:
        print(f"error: {exc}", flush=True)
        return 1
    uploaded = None
    if args.upload:
        uploaded = _upload(args, path)
        if uploaded is None:
            return 1
    print(
        json.dumps(
            {
                "out": str(path),
                "uploaded": uploaded,
                "experts": len(cells),
                "missing": missing,
                "oldest_step": min((c.step for c in cells), default=None),
                "newest_step": max((c.step for c in cells), default=None),
                "trainer_step": manifest.trainer_step,
            }
        ),
        flush=True,
    )
    return 0 if cells else 1


def _upload(args: argparse.Namespace, path) -> str | None:  # path: Path
    """Upload the export with the saved credential (`node-agent join` / `train --join-code` made it)."""
    from node_agent.cli.train import _portal_state
    from node_agent.portal.client import PortalClient, PortalError
    from node_agent.portal.joining import AgentSetupError

    try:
        state, identity = _portal_state(args)
        portal = args.portal or state.portal_url
        size = path.stat().st_size
        client = PortalClient(portal, timeout=max(30.0, size / 1e6))  # >= 1 MB/s
        reply = client.upload_export(identity, state.credential, path.read_bytes())
    except (AgentSetupError, PortalError, OSError, ValueError) as exc:
        print(f"error: upload failed: {exc}", flush=True)
        return None
    return str(reply.data.get("sha256", ""))


def run_evaluate(args: argparse.Namespace) -> int:
    import json

    from node_agent.training.export import ExportError, evaluate_export, evaluate_lm_export, read_manifest
    from node_agent.training.text import TextDataError

    try:
        if read_manifest(args.path).spec.task == "lm":
            result = evaluate_lm_export(args.path, args.text, args.corpus_bytes)
        else:
            result = evaluate_export(args.path, seed=args.seed)
    except (ExportError, TextDataError) as exc:
        print(f"error: {exc}", flush=True)
        return 1
    print(json.dumps(result), flush=True)
    return 0

"""`node-agent swarm`: a whole swarm on this machine (bootstrap node, expert servers, optional trainer)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "swarm",
        help="start a local swarm: bootstrap node + expert servers (+ a trainer with --train)",
        description="Start a bootstrap node and expert servers covering a grid as child processes on this "
        "machine, print the bootstrap address, stream their logs, stop them all on Ctrl-C / SIGTERM.",
    )
    parser.add_argument("--servers", type=int, default=4)
    parser.add_argument("--grid", default="4x4", help="expert grid, e.g. 4x4 (default %(default)s)")
    parser.add_argument(
        "--uid-prefix",
        default="ffn",
        help="grid name; several, space-separated, e.g. 'lm.b0 lm.b1' for an LM",
    )
    parser.add_argument("--expert-class", default="ffn")
    parser.add_argument("--hidden-dim", type=int, default=64)
    parser.add_argument("--replicas", type=int, default=1, help="servers hosting each cell (default 1)")
    parser.add_argument("--optimizer", default="adam", choices=["adam", "sgd"])
    parser.add_argument("--lr", type=float, default=3e-3, help="experts' learning rate")
    parser.add_argument("--announce-ttl", type=float, default=30.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train", action="store_true", help="also run `node-agent train` against the swarm")
    parser.add_argument(
        "--train-args", default="", help="extra arguments for the trainer, e.g. '--steps 500 --k-best 4'"
    )
    parser.add_argument(
        "--keep-running", action="store_true", help="keep the swarm up after the trainer finished"
    )
    parser.add_argument("--quiet", action="store_true", help="do not stream the children's logs")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import shlex
    import signal
    import sys
    import time

    from node_agent.swarm.launcher import LocalSwarm, SwarmConfig, SwarmError
    from node_agent.training.models import parse_grid

    try:
        config = SwarmConfig(
            servers=args.servers,
            grid=parse_grid(args.grid),
            uid_prefix=args.uid_prefix,
            expert_class=args.expert_class,
            hidden_dim=args.hidden_dim,
            replicas=args.replicas,
            optimizer=args.optimizer,
            lr=args.lr,
            announce_ttl=args.announce_ttl,
            announce_period=max(1.0, args.announce_ttl / 3),
            seed=args.seed,
        )
        swarm = LocalSwarm(config, output=None if args.quiet else _print)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    def on_sigterm(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    code = 0
    try:
        swarm.start()
        print(f"bootstrap: {swarm.initial_peer}", flush=True)
        for index, (server, pattern) in enumerate(zip(swarm.servers, swarm.patterns, strict=True)):
            print(f"server-{index}: {server.address} serving {pattern}", flush=True)
        grids = args.uid_prefix.split()
        task = f" --task lm --blocks {len(grids)}" if len(grids) > 1 else ""  # one grid per LM block
        print(
            f"train against it: node-agent train{task} --initial-peers {swarm.initial_peer} "
            f"--grid {args.grid} --hidden-dim {args.hidden_dim} --rtc-loopback-only",
            flush=True,
        )
        trainer = swarm.start_trainer(*shlex.split(args.train_args)) if args.train else None
        while True:
            if trainer is not None and not trainer.running:
                code = trainer.wait() or 0
                print(f"trainer finished with exit code {code}", flush=True)
                if not args.keep_running:
                    break
                trainer = None
            if not any(server.running for server in swarm.servers):
                print("every expert server has exited", file=sys.stderr, flush=True)
                code = 1
                break
            time.sleep(0.5)
    except KeyboardInterrupt:
        print("stopping the swarm", flush=True)
    except SwarmError as exc:
        print(f"error: {exc}", file=sys.stderr)
        code = 1
    finally:
        swarm.stop()
        signal.signal(signal.SIGTERM, previous)
    return code


def _print(line: str) -> None:
    print(line, flush=True)

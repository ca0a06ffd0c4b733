"""`node-agent serve`: host experts for the swarm, reachable peer to peer over WebRTC; no portal needed."""

from __future__ import annotations

import argparse

from node_agent.cli import peer_list


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="host experts and announce them in the DHT",
        description="Host experts (e.g. --experts 'ffn.[0:4].[0:4]'), batch calls, train on backward.",
    )
    parser.add_argument(
        "--experts", required=True, help="uid pattern(s), space-separated, e.g. 'ffn.[0:4].[0:4]'"
    )
    parser.add_argument(
        "--expert-class", default="ffn", help="registered expert class (ffn, transformer, nop)"
    )
    parser.add_argument("--hidden-dim", type=int, default=1024)
    parser.add_argument(
        "--initial-peers", action="extend", type=peer_list, default=[], help="HOST:PORT of the swarm"
    )
    parser.add_argument("--listen", default="0.0.0.0:0", help="DHT HOST:PORT to bind (default %(default)s)")
    parser.add_argument(
        "--reachability",
        choices=["auto", "public", "private"],
        default="auto",
        help="auto: ask peers for a dial-back; public/private: skip it (a forwarded port; a known NAT)",
    )
    parser.add_argument("--identity", default=None, help="identity key file (default: user data directory)")
    parser.add_argument("--ephemeral", action="store_true", help="use a throwaway identity")
    parser.add_argument("--optimizer", default="adam", choices=["adam", "sgd"])
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup-steps", type=int, default=0)
    parser.add_argument("--total-steps", type=int, default=0, help="linear decay to 0 over this many steps")
    parser.add_argument("--clip-grad-norm", type=float, default=1.0, help="0 disables clipping")
    parser.add_argument("--max-batch-size", type=int, default=4096)
    parser.add_argument("--max-wait", type=float, default=0.005, help="seconds to wait to fill a batch")
    parser.add_argument(
        "--step-delay",
        type=float,
        default=0.05,
        help="seconds kept backwards may wait for each other before one optimiser step (0: step on each)",
    )
    parser.add_argument("--announce-ttl", type=float, default=60.0)
    parser.add_argument("--announce-period", type=float, default=20.0)
    parser.add_argument("--checkpoint-dir", default=None, help="save/restore experts here (safetensors)")
    parser.add_argument("--checkpoint-period", type=float, default=600.0)
    parser.add_argument(
        "--replica-period",
        type=float,
        default=5.0,
        help="seconds between averaging rounds with other replicas of the same experts (0: never)",
    )
    parser.add_argument(
        "--no-take-over",
        action="store_true",
        help="start from fresh weights instead of the newest state of a live replica",
    )
    parser.add_argument(
        "--fallback-export",
        default=None,
        help="a `node-agent export` file to start cells from when no live replica holds them",
    )
    parser.add_argument("--stats-period", type=float, default=30.0, help="seconds between throughput lines")
    parser.add_argument("--seed", type=int, default=None, help="seed the initial expert weights")
    parser.add_argument(
        "--ice-server",
        action="append",
        default=[],
        help="stun:host:port or turn:user:pass@host:port (repeatable)",
    )
    parser.add_argument("--rtc-loopback", action="store_true", help="also offer 127.0.0.1 ICE candidates")
    parser.add_argument("--rtc-loopback-only", action="store_true", help="offer only 127.0.0.1 (one machine)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import asyncio
    import logging

    logging.getLogger("node_agent").setLevel(min(logging.INFO, logging.getLogger().level or logging.INFO))
    from node_agent.process_tuning import tune_server_process

    tune_server_process()
    return asyncio.run(_serve(args))


def rtc_options_from_args(args: argparse.Namespace):  # -> RTCOptions
    from node_agent.rtc.config import RTCOptions, parse_ice_server

    servers = tuple(parse_ice_server(s) for s in args.ice_server)
    if args.rtc_loopback_only:
        return RTCOptions.for_loopback(ice_servers=servers)
    return RTCOptions(ice_servers=servers, loopback=args.rtc_loopback)


async def _serve(args: argparse.Namespace) -> int:
    import asyncio
    import logging
    import signal

    from node_agent.dht import DHTError, DHTNode
    from node_agent.identity import Identity
    from node_agent.moe.server.backend import OptimizerConfig, create_backends
    from node_agent.moe.server.server import ExpertServer, ServerOptions
    from node_agent.moe.uids import expand_patterns
    from node_agent.portal.project_dht import project_validators

    log = logging.getLogger("node_agent.cli.serve")
    try:
        uids = expand_patterns(args.experts)
        rtc_options = rtc_options_from_args(args)
        optimizer = OptimizerConfig(
            name=args.optimizer,
            lr=args.lr,
            warmup_steps=args.warmup_steps,
            total_steps=args.total_steps,
            clip_grad_norm=args.clip_grad_norm or None,
        )
        backends = create_backends(uids, args.expert_class, args.hidden_dim, optimizer, seed=args.seed)
    except ValueError as exc:
        print(f"error: {exc}", flush=True)
        return 2
    identity = Identity.generate() if args.ephemeral else Identity.load_or_create(args.identity)
    try:
        dht = await DHTNode.create(  # no portal, no project: ungated experts, nothing else
            initial_peers=args.initial_peers,
            listen=args.listen,
            identity=identity,
            validators=project_validators(),
            reachability=args.reachability,
        )
    except (DHTError, OSError, ValueError) as exc:
        print(f"error: {exc}", flush=True)
        return 1
    options = ServerOptions(
        max_batch_size=args.max_batch_size,
        max_wait=args.max_wait,
        step_delay=args.step_delay,
        announce_ttl=args.announce_ttl,
        announce_period=args.announce_period,
        checkpoint_dir=args.checkpoint_dir,
        checkpoint_period=args.checkpoint_period,
        stats_period=args.stats_period,
        replica_period=args.replica_period,
        take_over=not args.no_take_over,
    )
    stop = asyncio.Event()
    failure: list[str] = []

    def fail(reason: str) -> None:  # a background loop keeps dying: stop rather than serve half-alive
        failure.append(reason)
        stop.set()

    fallback = None
    if args.fallback_export:
        from node_agent.training.export import export_fallback

        fallback = export_fallback(args.fallback_export)
    server = await ExpertServer.create(dht, backends, options, rtc_options, on_fatal=fail, fallback=fallback)
    print(f"{dht.endpoint}/{dht.node_id.hex()}", flush=True)
    log.info("serving %d %s experts (%s) at %s", len(uids), args.expert_class, args.experts, dht.endpoint)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down: answering in-flight calls and withdrawing announcements")
    await server.shutdown()
    await dht.shutdown()
    return 3 if failure else 0

"""`node-agent bootstrap`: run a DHT-only node (no torch, no experts) that others join through."""

from __future__ import annotations

import argparse

from node_agent.cli import peer_list


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "bootstrap",
        help="run a DHT-only node and print its address for --initial-peers",
        description="Run a DHT-only node; prints its address as other nodes accept it in --initial-peers.",
    )
    parser.add_argument("--listen", default="0.0.0.0:31337", help="HOST:PORT to bind (default %(default)s)")
    parser.add_argument(
        "--initial-peers",
        action="extend",
        type=peer_list,
        default=[],
        help="join an existing swarm through these HOST:PORT (comma-separated or repeated)",
    )
    parser.add_argument("--identity", default=None, help="identity key file (default: user data directory)")
    parser.add_argument("--ephemeral", action="store_true", help="use a throwaway identity, save nothing")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import asyncio

    return asyncio.run(_serve(args))


async def _serve(args: argparse.Namespace) -> int:
    import asyncio
    import signal

    from node_agent.dht import DHTError, DHTNode
    from node_agent.identity import Identity

    identity = Identity.generate() if args.ephemeral else Identity.load_or_create(args.identity)
    try:
        node = await DHTNode.create(initial_peers=args.initial_peers, listen=args.listen, identity=identity)
    except (DHTError, OSError, ValueError) as exc:
        print(f"error: {exc}", flush=True)
        return 1
    print(f"{node.endpoint}/{node.node_id.hex()}", flush=True)
    print(f"bootstrap node up; others join with: --initial-peers {node.endpoint}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await node.shutdown()
    return 0

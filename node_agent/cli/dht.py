"""`node-agent dht get|put`: one-shot DHT queries for debugging a swarm (client mode, throwaway id)."""

from __future__ import annotations

import argparse
import json

from node_agent.cli import peer_list


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("dht", help="query or write the DHT (debugging)")
    actions = parser.add_subparsers(dest="dht_action", metavar="ACTION", required=True)
    get = actions.add_parser("get", help="print all live subkeys of KEY as JSON")
    get.add_argument("key")
    get.add_argument("--latest", action="store_true", help="ask all nearest replicas, not the first")
    put = actions.add_parser("put", help="store a JSON VALUE under KEY")
    put.add_argument("key")
    put.add_argument("value", help="JSON value")
    put.add_argument("--subkey", default=None)
    put.add_argument(
        "--ttl", type=float, default=600.0, help="seconds until it expires (default %(default)s)"
    )
    for sub in (get, put):
        sub.add_argument(
            "--initial-peers",
            action="extend",
            type=peer_list,
            required=True,
            help="HOST:PORT of swarm members (comma-separated or repeated)",
        )
        sub.add_argument("--listen", default="0.0.0.0:0")
        sub.add_argument("--identity", default=None, help="identity key file (default: throwaway)")
        sub.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for initial peers")
        sub.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import asyncio

    return asyncio.run(_run(args))


def _jsonable(value: object) -> object:
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


async def _run(args: argparse.Namespace) -> int:
    import time

    from node_agent.dht import DHTError, DHTNode
    from node_agent.identity import Identity

    identity = Identity.load_or_create(args.identity) if args.identity else Identity.generate()
    try:
        node = await DHTNode.create(
            initial_peers=args.initial_peers,
            listen=args.listen,
            identity=identity,
            client_mode=True,
            bootstrap_timeout=args.timeout,
        )
    except (DHTError, OSError, ValueError) as exc:
        print(f"error: {exc}")
        return 1
    try:
        if args.dht_action == "put":
            value = json.loads(args.value)
            ok = await node.store(args.key, value, time.time() + args.ttl, subkey=args.subkey)
            print(json.dumps({"stored": ok, "key": args.key, "subkey": args.subkey}))
            return 0 if ok else 1
        found = await node.get(args.key, latest=args.latest)
        out = {
            str(subkey): {
                "value": _jsonable(v.value),
                "expiration": v.expiration,
                "owner": v.owner and v.owner.hex(),
            }
            for subkey, v in found.items()
        }
        print(json.dumps(out, indent=2))
        return 0 if found else 1
    except (DHTError, ValueError) as exc:
        print(f"error: {exc}")
        return 1
    finally:
        await node.shutdown()

"""`node-agent bootstrap`: run a DHT-only node (no torch, no experts) that others join through.

It checks records like every other node of its project (`node_agent.portal.project_dht`): with `--portal` and
`--project` (or a saved `--project-config`) it knows the portal's key and whether the project is gated;
without, it applies the ungated `experts:` rules and refuses revocation lists, which it cannot judge.
"""

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
    parser.add_argument(
        "--reachability",
        choices=["auto", "public", "private"],
        default="auto",
        help="auto: ask peers for a dial-back; public/private: skip it (a forwarded port; a known NAT)",
    )
    parser.add_argument("--identity", default=None, help="identity key file (default: user data directory)")
    parser.add_argument("--ephemeral", action="store_true", help="use a throwaway identity, save nothing")
    project = parser.add_argument_group("project (so this node checks records as the project's nodes do)")
    project.add_argument("--portal", default=None, help="portal URL to read the project's config from")
    project.add_argument("--project", default=None, help="project slug (with --portal)")
    project.add_argument("--project-config", default=None, help="the project's config as a JSON file")
    parser.add_argument(
        "--any-namespace",
        action="store_true",
        help="also keep keys outside the project's namespaces (experiments with `node-agent dht put`)",
    )
    parser.set_defaults(handler=run)


def project_scope(args: argparse.Namespace):  # -> ProjectScope | None
    """The project this node serves, from --project-config or --portal/--project; ValueError if unusable."""
    import json
    from pathlib import Path

    from node_agent.portal.project_config import parse_project_config
    from node_agent.portal.project_dht import ProjectScope

    if args.project_config:
        try:
            data = json.loads(Path(args.project_config).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ValueError(f"cannot read {args.project_config}: {exc}") from None
    elif args.portal or args.project:
        from node_agent.portal.client import PortalClient, PortalError

        if not (args.portal and args.project):
            raise ValueError("--portal and --project go together")
        try:
            data = PortalClient(args.portal).project_config(args.project)
        except PortalError as exc:
            raise ValueError(f"cannot read the project config: {exc}") from None
    else:
        return None
    return ProjectScope.from_config(parse_project_config(data))


def run(args: argparse.Namespace) -> int:
    import asyncio

    return asyncio.run(_serve(args))


async def _serve(args: argparse.Namespace) -> int:
    import asyncio
    import signal

    from node_agent.dht import DHTError, DHTNode, RecordValidator
    from node_agent.identity import Identity
    from node_agent.portal.project_dht import project_validators

    try:
        scope = project_scope(args)
        identity = Identity.generate() if args.ephemeral else Identity.load_or_create(args.identity)
        validators = project_validators(scope)
        if args.any_namespace:
            validators[""] = RecordValidator()
        node = await DHTNode.create(
            initial_peers=args.initial_peers,
            listen=args.listen,
            identity=identity,
            validators=validators,
            reachability=args.reachability,
        )
    except (DHTError, OSError, ValueError) as exc:
        print(f"error: {exc}", flush=True)
        return 1
    print(f"{node.endpoint}/{node.node_id.hex()}", flush=True)
    print(f"bootstrap node up; others join with: --initial-peers {node.endpoint}", flush=True)
    project = f"project {scope.project} ({'gated' if scope.gated else 'open'})" if scope else "no project"
    print(f"checking records for {project}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await node.shutdown()
    return 0

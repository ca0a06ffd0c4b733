"""`node-agent join`: trade a portal join code for a credential, then serve the project's experts.

Run again without a code to restart with the saved credential (`agent.json` in the data directory); a spent
code with a saved credential does the same. The node starts even when no bootstrap peer answers (a restarting
portal) and keeps retrying them with backoff, re-reading them from the portal.
"""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "join",
        help="join a portal project with a join code and serve its experts",
        description="Trade CODE (from the project's Join page) for a credential signed by the portal, "
        "join the project's DHT, serve the experts the swarm needs most, heartbeat to the portal and renew "
        "the credential. Without CODE, restart with the credential saved in --data-dir.",
    )
    parser.add_argument("portal_url", metavar="PORTAL_URL", help="e.g. https://colearn.example.org")
    parser.add_argument("code", metavar="CODE", nargs="?", default=None, help="one-time join code")
    parser.add_argument("--data-dir", default=None, help="identity, credential, checkpoints")
    parser.add_argument(
        "--experts",
        type=int,
        default=None,
        help="how many grid cells to serve (default 4, or one per grid when the project has more grids, "
        "as many as fit in 2 GiB while training)",
    )
    parser.add_argument("--expert-pattern", default=None, help="serve these uids instead, e.g. 'ffn.[0:2].0'")
    parser.add_argument("--listen", default="0.0.0.0:0", help="DHT HOST:PORT to bind (default %(default)s)")
    parser.add_argument("--heartbeat-period", type=float, default=30.0, help="seconds (portal may change it)")
    parser.add_argument("--announce-ttl", type=float, default=60.0)
    parser.add_argument("--announce-period", type=float, default=20.0)
    parser.add_argument("--approval-timeout", type=float, default=3600.0, help="wait this long for approval")
    parser.add_argument("--portal-timeout", type=float, default=10.0, help="seconds per portal request")
    parser.add_argument("--seed", type=int, default=None, help="seed the initial expert weights")
    parser.add_argument(
        "--peer-refresh-period",
        type=float,
        default=30.0,
        help="while no DHT peer answers, ask the portal for the bootstrap peers this often (seconds)",
    )
    parser.add_argument(
        "--rebalance-after",
        type=float,
        default=5.0,
        help="look at the grid again after this many seconds (plus jitter, 3 times) and move cells that "
        "other nodes also serve to empty ones; 0: never (default %(default)s)",
    )
    parser.add_argument("--rtc-loopback", action="store_true", help="also offer 127.0.0.1 ICE candidates")
    parser.add_argument("--rtc-loopback-only", action="store_true", help="offer only 127.0.0.1 (one machine)")
    parser.add_argument(
        "--ice-server",
        action="append",
        default=[],
        help="stun:host:port or turn:user:pass@host:port (repeatable; after the portal project's own)",
    )
    parser.set_defaults(handler=run)


def default_data_dir() -> str:
    import platformdirs

    return platformdirs.user_data_dir("colearn", appauthor=False)


def say(message: str) -> None:
    """Progress lines for the volunteer (stdout, flushed: the join command often runs under a pipe)."""
    import time

    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def run(args: argparse.Namespace) -> int:
    import asyncio
    import logging
    from pathlib import Path

    from node_agent.identity import Identity
    from node_agent.portal.joining import AgentSetupError, obtain_agent_state
    from node_agent.portal.state import AGENT_STATE_FILE
    from node_agent.rtc.config import parse_ice_server

    logging.getLogger("node_agent").setLevel(min(logging.INFO, logging.getLogger().level or logging.INFO))
    try:
        args.ice_servers = tuple(parse_ice_server(text) for text in args.ice_server)
    except ValueError as exc:
        say(f"error: {exc}")
        return 2
    data_dir = Path(args.data_dir or default_data_dir())
    try:
        identity = Identity.load_or_create(data_dir / "identity.key")
    except (OSError, ValueError) as exc:
        say(f"error: {exc}")
        return 1
    try:
        state = obtain_agent_state(
            args.portal_url,
            args.code,
            identity,
            data_dir / AGENT_STATE_FILE,
            approval_timeout=args.approval_timeout,
            portal_timeout=args.portal_timeout,
            say=say,
        )
    except AgentSetupError as exc:
        say(f"error: {exc}")
        return 1
    expires = _local_time(state.expires_at)
    say(f"joined project {state.project} as node {identity.node_id.hex()} (credential valid until {expires})")
    from node_agent.process_tuning import tune_server_process

    tune_server_process()
    return asyncio.run(_serve(args, identity, state, data_dir))


def _local_time(timestamp: float) -> str:
    import time

    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp))


async def _serve(args: argparse.Namespace, identity, state, data_dir) -> int:
    import asyncio
    import signal

    from node_agent.dht import DHTError
    from node_agent.portal.client import PortalClient
    from node_agent.portal.runtime import AgentOptions, AgentRuntime

    options = AgentOptions(
        data_dir=data_dir,
        listen=args.listen,
        num_experts=args.experts,
        experts=args.expert_pattern,
        heartbeat_period=args.heartbeat_period,
        announce_ttl=args.announce_ttl,
        announce_period=args.announce_period,
        rtc_loopback=args.rtc_loopback,
        rtc_loopback_only=args.rtc_loopback_only,
        seed=args.seed,
        peer_refresh_period=args.peer_refresh_period,
        rebalance_after=max(0.0, args.rebalance_after),
        rebalance_rounds=3 if args.rebalance_after > 0 else 0,
        ice_servers=args.ice_servers,
    )
    client = PortalClient(state.portal_url, timeout=args.portal_timeout)
    try:
        runtime = await AgentRuntime.create(client, identity, state, options, say)
    except (DHTError, OSError, ValueError) as exc:
        say(f"error: could not start: {exc}")
        return 1
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, runtime.stop)
    await runtime.stopped.wait()
    say("stopping: answering in-flight calls and withdrawing announcements ...")
    await runtime.shutdown()
    say("stopped")
    return 3 if runtime.stop_reason else 0

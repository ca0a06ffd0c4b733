"""`node-agent join`: trade a portal join code for a credential, then serve the project's experts.

Run again without a code to restart with the saved credential (`agent.json` in the data directory).
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
    parser.add_argument("--experts", type=int, default=4, help="how many grid cells to serve (default 4)")
    parser.add_argument("--expert-pattern", default=None, help="serve these uids instead, e.g. 'ffn.[0:2].0'")
    parser.add_argument("--listen", default="0.0.0.0:0", help="DHT HOST:PORT to bind (default %(default)s)")
    parser.add_argument("--heartbeat-period", type=float, default=30.0, help="seconds (portal may change it)")
    parser.add_argument("--announce-ttl", type=float, default=60.0)
    parser.add_argument("--announce-period", type=float, default=20.0)
    parser.add_argument("--approval-timeout", type=float, default=3600.0, help="wait this long for approval")
    parser.add_argument("--portal-timeout", type=float, default=10.0, help="seconds per portal request")
    parser.add_argument("--seed", type=int, default=None, help="seed the initial expert weights")
    parser.add_argument("--rtc-loopback", action="store_true", help="also offer 127.0.0.1 ICE candidates")
    parser.add_argument("--rtc-loopback-only", action="store_true", help="offer only 127.0.0.1 (one machine)")
    parser.set_defaults(handler=run)


def default_data_dir() -> str:
    import platformdirs

    return platformdirs.user_data_dir("colearn", appauthor=False)


def say(message: str) -> None:
    """Progress lines for the volunteer (stdout, flushed: the join command often runs under a pipe)."""
    import time

    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def obtain_state(args: argparse.Namespace, identity, data_dir):  # -> AgentState | None
    """Join with the code, or load the saved credential; refresh the config if the portal answers."""
    import logging
    import time

    from node_agent import __version__
    from node_agent.agent import agent_platform
    from node_agent.credentials import AGENT_STATE_FILE, AgentState, load_agent_state, save_agent_state
    from node_agent.portal_client import PortalClient, PortalError, PortalRefused, normalise_portal_url
    from node_agent.portal_protocol import ProtocolError, parse_project_config

    log = logging.getLogger("node_agent.cli.join")
    client = PortalClient(args.portal_url, timeout=args.portal_timeout)
    state_path = data_dir / AGENT_STATE_FILE
    if args.code:
        say(f"joining {client.base_url} as node {identity.node_id.hex()} ...")
        try:
            reply = client.join_until_approved(
                identity,
                args.code,
                __version__,
                agent_platform(),
                max_wait=args.approval_timeout,
                on_pending=lambda: say("waiting for the project owner to approve this node ..."),
            )
            config = parse_project_config(reply.get("config"))
            state = AgentState(
                portal_url=client.base_url,
                project=config.project,
                credential=reply["credential"],
                config=dict(reply["config"]),
                node=dict(reply.get("node") or {}),
            )
            state.check(identity.public_key_bytes)
        except PortalRefused as exc:
            say(f"error: the portal refused the join code: {exc.code} {exc.detail}".strip())
            return None
        except (PortalError, ProtocolError, KeyError, TypeError) as exc:
            say(f"error: could not join: {exc}")
            return None
        save_agent_state(state_path, state)
        return state
    try:
        state = load_agent_state(state_path)
        state.check(identity.public_key_bytes)
    except ValueError as exc:
        say(f"error: {exc}")
        return None
    if normalise_portal_url(args.portal_url) != state.portal_url:
        say(f"error: {state_path} belongs to {state.portal_url}; pass a join code to join another portal")
        return None
    try:
        fresh = client.project_config(state.project)
        parse_project_config(fresh)
        state.config = fresh
        save_agent_state(state_path, state)
    except (PortalError, ProtocolError) as exc:
        log.warning("using the saved project config: %s", exc)
        say("portal unreachable; starting with the saved project config")
    if state.expires_at <= time.time():
        say("the saved credential has expired; it will be renewed when the portal answers")
    return state


def run(args: argparse.Namespace) -> int:
    import asyncio
    import logging
    from pathlib import Path

    from node_agent.identity import Identity

    logging.getLogger("node_agent").setLevel(min(logging.INFO, logging.getLogger().level or logging.INFO))
    data_dir = Path(args.data_dir or default_data_dir())
    try:
        identity = Identity.load_or_create(data_dir / "identity.key")
    except (OSError, ValueError) as exc:
        say(f"error: {exc}")
        return 1
    state = obtain_state(args, identity, data_dir)
    if state is None:
        return 1
    expires = _local_time(state.expires_at)
    say(f"joined project {state.project} as node {identity.node_id.hex()} (credential valid until {expires})")
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    return asyncio.run(_serve(args, identity, state, data_dir))


def _local_time(timestamp: float) -> str:
    import time

    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp))


async def _serve(args: argparse.Namespace, identity, state, data_dir) -> int:
    import asyncio
    import signal

    from node_agent.agent import AgentOptions, AgentRuntime
    from node_agent.dht import DHTError
    from node_agent.portal_client import PortalClient

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

"""Joining a project: a one-time code traded for a credential and the project config, or the saved ones.

The result (:class:`~node_agent.portal.state.AgentState`) is saved in the data directory, so a restart works
with the portal down.
"""

from __future__ import annotations

import logging
import platform
import time
from collections.abc import Callable
from pathlib import Path

import msgspec

from node_agent import __version__
from node_agent.identity import Identity
from node_agent.portal.client import (
    PortalClient,
    PortalError,
    PortalRefused,
    normalise_portal_url,
)
from node_agent.portal.errors import ProtocolError
from node_agent.portal.ice import parse_turn_grant
from node_agent.portal.project_config import parse_project_config
from node_agent.portal.state import AgentState, load_agent_state, save_agent_state

__all__ = ["AgentSetupError", "agent_platform", "obtain_agent_state", "refresh_turn_grant"]

logger = logging.getLogger(__name__)


def agent_platform() -> str:
    """``Linux-6.1-x86_64 / CPython 3.11.7``, as heartbeats and join requests report it."""
    text = f"{platform.system()}-{platform.release()}-{platform.machine()} / "
    text += f"{platform.python_implementation()} {platform.python_version()}"
    return text[:128]


#: How each kind of agent restarts from its saved credential (``{portal}``: the portal's URL).
RESTART_NODE = "node-agent join {portal}"
RESTART_TRAINER = "node-agent train --portal {portal}"


def restart_hint(portal_url: str, state_path: Path, restart: str = RESTART_NODE) -> str:
    """What to run instead of re-using a spent one-time code: the saved credential restarts the agent."""
    command = restart.format(portal=portal_url)
    if state_path.is_file():
        return (
            f"a code works once: to restart this agent, run `{command}` without a code "
            f"(it uses the credential saved in {state_path.parent})"
        )
    return (
        f"a code works once and no credential is saved in {state_path.parent}: to restart an agent, run "
        f"`{command}` without a code and with the --data-dir of its first join; "
        "for a new one, get a new code from the project's Join (or Train) page"
    )


class AgentSetupError(Exception):
    """The agent cannot start (join refused, no saved credential, wrong portal); the message says why."""


def obtain_agent_state(
    portal_url: str,
    code: str | None,
    identity: Identity,
    state_path: Path,
    *,
    approval_timeout: float = 3600.0,
    portal_timeout: float = 10.0,
    say: Callable[[str], None] = print,
    restart: str = RESTART_NODE,
) -> AgentState:
    """Join with ``code`` (saving the result at ``state_path``) or load the saved state and refresh its
    project config from the portal when it answers (a restart works with the portal down). A spent code
    with a saved state restarts from it (re-running the Join page's command must not strand a volunteer)."""
    client = PortalClient(portal_url, timeout=portal_timeout)
    if code:
        say(f"joining {client.base_url} as node {identity.node_id.hex()} ...")
        try:
            reply = client.join_until_approved(
                identity,
                code,
                __version__,
                agent_platform(),
                max_wait=approval_timeout,
                on_pending=lambda: say("waiting for the project owner to approve this node ..."),
            )
            config = parse_project_config(reply.get("config"))
            state = AgentState(
                portal_url=client.base_url,
                project=config.project,
                credential=reply["credential"],
                config=dict(reply["config"]),
                node=dict(reply.get("node") or {}),
                turn=reply.get("turn") if isinstance(reply.get("turn"), dict) else None,
            )
            state.check(identity.public_key_bytes)
        except PortalRefused as exc:
            message = f"the portal refused the join code: {exc.code} {exc.detail}".strip()
            if exc.code != "code_used":
                raise AgentSetupError(message) from exc
            hint = restart_hint(client.base_url, state_path, restart)
            if not state_path.is_file():
                raise AgentSetupError(f"{message}; {hint}") from exc
            say(f"{message}; {hint}; doing that now")
        except (PortalError, ProtocolError, KeyError, TypeError) as exc:
            raise AgentSetupError(f"could not join: {exc}") from exc
        else:
            save_agent_state(state_path, state)
            return state
    try:
        state = load_agent_state(state_path)
        state.check(identity.public_key_bytes)
    except ValueError as exc:
        raise AgentSetupError(str(exc)) from exc
    if normalise_portal_url(portal_url) != state.portal_url:
        raise AgentSetupError(f"{state_path} belongs to {state.portal_url}; join {portal_url} with a code")
    try:
        fresh = client.project_config(state.project)
        parse_project_config(fresh)
    except (PortalError, ProtocolError) as exc:
        logger.warning("using the saved project config: %s", exc)
        say("portal unreachable; starting with the saved project config")
    else:
        state.config = fresh
        save_agent_state(state_path, state)
    if state.expires_at <= time.time():
        say("the saved credential has expired; it will be renewed when the portal answers")
    return state


def refresh_turn_grant(
    state: AgentState,
    identity: Identity,
    state_path: Path,
    *,
    portal_timeout: float = 10.0,
    now: float | None = None,
) -> bool:
    """Renew the credential once when the saved TURN grant has expired (a trainer restarted from its saved
    credential runs no renewal loop), adopting the new credential and grant; True if it did. A portal that
    does not answer leaves the state as it is (a warning): the trainer then connects without TURN."""
    try:
        grant = parse_turn_grant(state.turn)
    except ProtocolError:
        grant = None
    if grant is None or grant.expires_at > (time.time() if now is None else now) + 60:
        return False
    try:
        reply = PortalClient(state.portal_url, timeout=portal_timeout).renew(identity, state.credential)
        fresh = parse_turn_grant(reply.data.get("turn"))
    except (PortalError, ProtocolError) as exc:
        logger.warning("could not renew the expired TURN credential: %s", exc)
        return False
    token = reply.data.get("credential")
    if not isinstance(token, str) or fresh is None:
        return False
    state.credential, state.turn = token, msgspec.to_builtins(fresh)
    save_agent_state(state_path, state)
    return True

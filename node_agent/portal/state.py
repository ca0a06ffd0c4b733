"""This node's own credential and project config on disk (``agent.json``, mode 0600).

So a restarted agent works without a new join code and without the portal.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from node_agent.portal.project_config import parse_project_config
from node_agent.portal.tokens import peek_credential, verify_credential

__all__ = ["AGENT_STATE_FILE", "AgentState", "load_agent_state", "save_agent_state"]
AGENT_STATE_FILE = "agent.json"


@dataclass(slots=True)
class AgentState:
    """What ``node-agent join`` got from the portal: enough to restart without it."""

    portal_url: str
    project: str
    credential: str
    config: dict[str, Any]
    node: dict[str, Any] = field(default_factory=dict)
    #: The TURN credential of the last join or renewal (`node_agent.portal.ice.TurnGrant`), if any.
    turn: dict[str, Any] | None = None

    @property
    def expires_at(self) -> float:
        return peek_credential(self.credential).expires_at

    def check(self, public_key: bytes) -> None:
        """Raise ValueError if the saved credential is not the portal's, or not for this node key."""
        config = parse_project_config(self.config)
        credential = peek_credential(self.credential)
        verify_credential(
            self.credential,
            portal_public_key=config.portal_key,
            now=credential.issued_at,  # expiry is the renewer's business, not a reason to refuse the file
            project=self.project,
            node_public_key=public_key,
        )


def save_agent_state(path: str | os.PathLike[str], state: AgentState) -> None:
    """Write atomically with mode 0600 (the credential lets anyone with the node key act as this node)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(target.name + ".tmp")
    with contextlib.suppress(FileNotFoundError):
        temporary.unlink()
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(asdict(state), handle, indent=2, sort_keys=True)
    os.replace(temporary, target)


def load_agent_state(path: str | os.PathLike[str]) -> AgentState:
    """Read ``agent.json``; ValueError with the reason if it is missing fields or unreadable."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{path} does not exist: run `node-agent join <portal-url> <code>` first") from None
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read {path}: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} is not a JSON object")
    try:
        state = AgentState(
            portal_url=str(data["portal_url"]),
            project=str(data["project"]),
            credential=str(data["credential"]),
            config=dict(data["config"]),
            node=dict(data.get("node") or {}),
            turn=dict(data["turn"]) if isinstance(data.get("turn"), dict) else None,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{path} lacks a field: {exc}") from None
    return state

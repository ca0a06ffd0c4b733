"""Credential checks inside the DHT: the gate a project's peers apply to expert announcements.

Design brief section 3: the portal signs credentials with its own key and the project's config carries
the portal's public key, so peers check credentials themselves, offline. Bans are credentials not
renewed plus a revocation list the portal publishes in the DHT (``revocations:<project>``, plain value,
stored by a DHT node whose identity IS the portal key, so the record's owner is the portal's node id).

* :class:`CredentialPolicy`: pure; the portal key, the project, the current revocation list; checks a
  token for the node that signed a record (:meth:`CredentialPolicy.check`).
* :class:`RevocationListValidator`: the ``revocations:`` namespace rule (owner must be the portal).
* :class:`RevocationWatcher`: a background task that re-reads the list and updates the policy.
* :func:`install_credential_checks`: makes a DHT node a gated project's node
  (:func:`node_agent.project_dht.install_project_validators`).
* :class:`AgentState` with :func:`save_agent_state` / :func:`load_agent_state`: this node's own
  credential and project config in its data directory (``agent.json``, mode 0600), so a restarted agent
  works without a new join code and without the portal.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from node_agent.dht.api import DHTError, DHTRecordRefused, DHTValidationError, RecordValidator, RecordView
from node_agent.identity import node_id_from_public_key
from node_agent.portal_protocol import (
    Credential,
    CredentialError,
    PayloadError,
    RevocationList,
    parse_project_config,
    parse_revocation_list,
    peek_credential,
    revocations_key,
    verify_credential,
)

logger = logging.getLogger(__name__)

_VERIFIED_CACHE_SIZE = 1024


class CredentialPolicy:
    """What a gated project's peers accept. Pure apart from a cache of signatures already checked.

    A DHT validator runs on every datagram of its namespace and one announcement batch repeats the same
    token dozens of times, so a verified token is cached; expiry, revocation and the binding to the
    record's owner are re-checked on every call.
    """

    def __init__(self, project: str, portal_public_key: bytes, revoked: frozenset[str] = frozenset()) -> None:
        self.project = project
        self.portal_public_key = portal_public_key
        self.portal_node_id = node_id_from_public_key(portal_public_key)
        self.revocations = RevocationList(frozenset(revoked), 0.0)
        self._verified: OrderedDict[str, Credential] = OrderedDict()

    @property
    def revoked(self) -> frozenset[str]:
        return self.revocations.revoked

    def update_revocations(self, revocations: RevocationList) -> bool:
        """Adopt a newer list (larger ``t``); returns True if it changed what we refuse."""
        if revocations.published_at < self.revocations.published_at:
            return False
        changed = revocations.revoked != self.revocations.revoked
        self.revocations = revocations
        return changed

    def check(self, token: object, *, owner: bytes, now: float) -> Credential:
        """The credential if ``token`` lets node ``owner`` act in this project now; else CredentialError."""
        if not isinstance(token, str):
            raise CredentialError("malformed", "credential missing")
        credential = self._verified.get(token)
        if credential is None:
            credential = verify_credential(
                token, portal_public_key=self.portal_public_key, now=now, project=self.project
            )
            self._verified[token] = credential
            if len(self._verified) > _VERIFIED_CACHE_SIZE:
                self._verified.popitem(last=False)
        if credential.expires_at <= now:
            raise CredentialError("expired", f"expired {now - credential.expires_at:.0f}s ago")
        if credential.node_id != owner:
            raise CredentialError("wrong_node", "credential was issued to another node key")
        if credential.cid in self.revocations.revoked:
            raise CredentialError("revoked", f"credential {credential.cid} is revoked")
        return credential


class RevocationListValidator(RecordValidator):
    """``revocations:<project>`` may only be written by the portal; the newer list (``t``) wins.

    The shape (plain value, a valid list) is checked by every node: a record that breaks it is an offence.
    Whether the list is *this project's portal's* needs the project's context; without it (``policy`` is
    None: a node started for no project) the node refuses every list, and refusals for want of context
    are :class:`DHTRecordRefused`, so nobody is penalised for relaying a list it could not judge.
    """

    max_value_size = 32 * 1024
    max_expiration_ahead = 7 * 24 * 3600.0

    def __init__(self, policy: CredentialPolicy | None) -> None:
        self.policy = policy

    def validate(self, record: RecordView, now: float) -> None:
        if record.subkey is not None:
            raise DHTValidationError("a revocation list is a plain value (no subkey)")
        try:
            parse_revocation_list(record.value)
        except PayloadError as exc:
            raise DHTValidationError(str(exc)) from exc
        if self.policy is None:
            raise DHTRecordRefused("this node serves no project: it cannot tell a portal's revocation list")
        if record.key != revocations_key(self.policy.project):
            raise DHTRecordRefused(f"{record.key!r} is not this project's revocation list")
        if record.owner != self.policy.portal_node_id:
            raise DHTRecordRefused("revocation list not stored by the project's portal")

    def prefers(self, new: RecordView, old: RecordView) -> bool:
        new_t, old_t = _published_at(new), _published_at(old)
        return new_t > old_t if new_t != old_t else new.expiration > old.expiration


def _published_at(record: RecordView) -> float:
    try:
        return parse_revocation_list(record.value).published_at
    except PayloadError:
        return float("-inf")


def install_credential_checks(dht: Any, policy: CredentialPolicy) -> None:
    """Make ``dht`` a gated project's node: the full validator set of :mod:`node_agent.project_dht`."""
    from node_agent.project_dht import ProjectScope, install_project_validators

    install_project_validators(dht, ProjectScope(policy.project, policy.portal_public_key, True), policy)


async def fetch_revocations(dht: Any, policy: CredentialPolicy) -> RevocationList | None:
    """Read the project's revocation list from the DHT (None if the portal has not published one)."""
    found = await dht.get(revocations_key(policy.project), latest=True)
    entry = found.get(None)
    if entry is None or entry.owner != policy.portal_node_id:
        return None
    try:
        return parse_revocation_list(entry.value)
    except PayloadError as exc:
        logger.warning("ignoring a malformed revocation list: %s", exc)
        return None


class RevocationWatcher:
    """Re-reads the revocation list every ``period`` seconds; a DHT error is logged, never raised."""

    def __init__(self, dht: Any, policy: CredentialPolicy, period: float) -> None:
        self.dht = dht
        self.policy = policy
        self.period = period
        self._task: asyncio.Task[None] | None = None

    @classmethod
    async def create(cls, dht: Any, policy: CredentialPolicy, period: float = 60.0) -> RevocationWatcher:
        """Fetch once (so the first announcements are already checked against it), then keep watching."""
        watcher = cls(dht, policy, period)
        await watcher.refresh()
        watcher._task = asyncio.create_task(watcher._loop(), name="revocation-watcher")
        return watcher

    async def refresh(self) -> None:
        try:
            revocations = await fetch_revocations(self.dht, self.policy)
        except DHTError as exc:
            logger.info("could not read the revocation list: %s", exc)
            return
        if revocations is not None and self.policy.update_revocations(revocations):
            logger.info(
                "revocation list updated: %d revoked credential(s), published %.0fs ago",
                len(revocations.revoked),
                time.time() - revocations.published_at,
            )

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.period)
            await self.refresh()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None


# ---- this node's own credential on disk -----------------------------------------------------------------

AGENT_STATE_FILE = "agent.json"


@dataclass(slots=True)
class AgentState:
    """What ``node-agent join`` got from the portal: enough to restart without it."""

    portal_url: str
    project: str
    credential: str
    config: dict[str, Any]
    node: dict[str, Any] = field(default_factory=dict)

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
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{path} lacks a field: {exc}") from None
    return state

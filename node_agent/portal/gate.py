"""Credential checks inside the DHT: the gate a project's peers apply to expert announcements.

The portal signs credentials with its own key and the project's config carries the portal's public key, so
peers check credentials themselves, offline. Bans are credentials not renewed plus a revocation list the
portal publishes in the DHT (``revocations:<project>``, plain value, stored by a DHT node whose identity IS
the portal key, so the record's owner is the portal's node id).

* :class:`CredentialPolicy`: pure; the portal key, the project, the current revocation list; checks a
  token for the node that signed a record (:meth:`CredentialPolicy.check`).
* :class:`RevocationListValidator`: the ``revocations:`` namespace rule (owner must be the portal).
* :class:`RevocationWatcher`: a supervised background loop that re-reads the list and updates the policy.
* :func:`install_credential_checks`: makes a DHT node a gated project's node
  (:func:`node_agent.portal.project_dht.install_project_validators`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict

from node_agent.dht.api import (
    DHTError,
    DHTNodeAPI,
    DHTRecordRefused,
    DHTValidationError,
    RecordValidator,
    RecordView,
)
from node_agent.identity import node_id_from_public_key
from node_agent.portal.errors import CredentialError, PayloadError
from node_agent.portal.revocations import RevocationList, parse_revocation_list, revocations_key
from node_agent.portal.tokens import Credential, verify_credential
from node_agent.supervisor import TaskSupervisor

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


def install_credential_checks(dht: DHTNodeAPI, policy: CredentialPolicy) -> None:
    """Make ``dht`` a gated project's node: the full validator set of :mod:`node_agent.portal.project_dht`."""
    from node_agent.portal.project_dht import ProjectScope, install_project_validators

    install_project_validators(dht, ProjectScope(policy.project, policy.portal_public_key, True), policy)


async def fetch_revocations(dht: DHTNodeAPI, policy: CredentialPolicy) -> RevocationList | None:
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
    """Re-reads the revocation list every ``period`` seconds; a DHT error is logged, never raised.

    The loop runs under ``supervisor`` (the agent runtime's: restarted if it dies, the runtime stopped if it
    keeps dying), or under a supervisor of its own when none is given.
    """

    LOOP = "revocation-watcher"

    def __init__(self, dht: DHTNodeAPI, policy: CredentialPolicy, period: float) -> None:
        self.dht = dht
        self.policy = policy
        self.period = period
        self._supervisor: TaskSupervisor | None = None
        self._own_supervisor = False

    @classmethod
    async def create(
        cls,
        dht: DHTNodeAPI,
        policy: CredentialPolicy,
        period: float = 60.0,
        supervisor: TaskSupervisor | None = None,
    ) -> RevocationWatcher:
        """Fetch once (so the first announcements are already checked against it), then keep watching."""
        watcher = cls(dht, policy, period)
        await watcher.refresh()
        watcher._own_supervisor = supervisor is None
        watcher._supervisor = supervisor or TaskSupervisor("revocation watcher")
        watcher._supervisor.start(cls.LOOP, watcher._loop)
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
        if self._supervisor is not None:
            await self._supervisor.stop(self.LOOP)
            if self._own_supervisor:
                await self._supervisor.close()
        self._supervisor = None

"""Credential renewal: half-way through the credential's lifetime, so a portal outage of a while does no harm.

The TURN credential (`node_agent.portal.ice.TurnGrant`) comes with each renewal and usually lives shorter:
the renewer wakes at the earlier of the two half-lives and hands the new grant to ``install_turn``.

Failures retry with backoff; a refusal that means a ban or a revocation stops the node (``stop``). The loop
runs under the agent runtime's supervisor: if it dies it restarts, and if it keeps dying the runtime stops
loudly rather than serving until the credential expires.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable

from node_agent.backoff import Backoff
from node_agent.identity import Identity
from node_agent.portal.client import PortalClient, PortalRefused, PortalUnreachable
from node_agent.portal.errors import ProtocolError
from node_agent.portal.ice import TurnGrant, parse_turn_grant
from node_agent.portal.tokens import peek_credential

__all__ = ["CredentialRenewer"]

logger = logging.getLogger(__name__)

#: Retries after a failed renewal: 2.5-5 s, doubling up to 10 minutes.
RENEWAL_BACKOFF = Backoff(base=5.0, maximum=600.0)


class CredentialRenewer:
    """Keeps ``credential()`` fresh through the portal; ``install(token)`` adopts each renewed one."""

    def __init__(
        self,
        client: PortalClient,
        identity: Identity,
        credential: Callable[[], str],
        install: Callable[[str], None],
        stop: Callable[[str], None],
        say: Callable[[str], None],
        backoff: Backoff = RENEWAL_BACKOFF,
        turn: Callable[[], TurnGrant | None] = lambda: None,
        install_turn: Callable[[TurnGrant], None] = lambda grant: None,
    ) -> None:
        self.client = client
        self.identity = identity
        self.credential = credential
        self.install = install
        self.stop = stop
        self.say = say
        self.backoff = backoff
        self.turn = turn
        self.install_turn = install_turn
        self._now = asyncio.Event()

    def renew_now(self) -> None:
        """Renew at once (the portal refused the credential)."""
        self._now.set()

    def renew_at(self) -> float:
        """Half-way through the credential's lifetime, or the TURN credential's if that comes first."""
        credential = peek_credential(self.credential())
        due = credential.issued_at + (credential.expires_at - credential.issued_at) / 2
        grant = self.turn()
        return min(due, grant.renew_at()) if grant is not None else due

    def _adopt(self, reply_data: dict[str, object]) -> bool:
        """Install the reply's credential (and TURN grant, if any); False if it carries no credential."""
        token = reply_data.get("credential")
        if not isinstance(token, str):
            return False
        self.install(token)
        try:
            grant = parse_turn_grant(reply_data.get("turn"))
        except ProtocolError as exc:
            logger.error("renewal reply carries a malformed TURN credential: %s", exc)
            return True
        if grant is not None:
            self.install_turn(grant)
        return True

    def expires_at(self) -> float:
        return peek_credential(self.credential()).expires_at

    async def renew_once(self) -> None:
        """Best-effort renewal before serving with an expired credential (a restart after a long stop)."""
        try:
            reply = await asyncio.to_thread(self.client.renew, self.identity, self.credential())
        except (PortalUnreachable, PortalRefused) as exc:
            self.say(f"could not renew the expired credential: {exc}")
            return
        self._adopt(reply.data)

    async def run(self) -> None:
        """Renew forever (returns only after a fatal refusal, having called ``stop``)."""
        failures = 0
        while True:
            if failures == 0:
                wait = self.renew_at() - time.time()
            else:
                wait = self.backoff.delay(failures, random.random())
            self._now.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._now.wait(), timeout=max(0.0, wait))
            try:
                reply = await asyncio.to_thread(self.client.renew, self.identity, self.credential())
            except PortalUnreachable as exc:
                failures += 1
                remaining = self.expires_at() - time.time()
                logger.warning("credential renewal failed (%s); %.0fs of validity left", exc, remaining)
                continue
            except PortalRefused as exc:
                failures += 1
                if exc.fatal:
                    self.stop(f"credential renewal refused: {exc.code} {exc.detail}".strip())
                    return
                logger.error("credential renewal refused: %s", exc)
                continue
            if not self._adopt(reply.data):
                failures += 1
                logger.error("renewal reply carries no credential")
                continue
            failures = 0

"""Credential renewal: half-way through the credential's lifetime, so a portal outage of a while does no harm.

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
    ) -> None:
        self.client = client
        self.identity = identity
        self.credential = credential
        self.install = install
        self.stop = stop
        self.say = say
        self.backoff = backoff
        self._now = asyncio.Event()

    def renew_now(self) -> None:
        """Renew at once (the portal refused the credential)."""
        self._now.set()

    def renew_at(self) -> float:
        """Half-way through the credential's lifetime."""
        credential = peek_credential(self.credential())
        return credential.issued_at + (credential.expires_at - credential.issued_at) / 2

    def expires_at(self) -> float:
        return peek_credential(self.credential()).expires_at

    async def renew_once(self) -> None:
        """Best-effort renewal before serving with an expired credential (a restart after a long stop)."""
        try:
            reply = await asyncio.to_thread(self.client.renew, self.identity, self.credential())
        except (PortalUnreachable, PortalRefused) as exc:
            self.say(f"could not renew the expired credential: {exc}")
            return
        token = reply.data.get("credential")
        if isinstance(token, str):
            self.install(token)

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
            token = reply.data.get("credential")
            if not isinstance(token, str):
                failures += 1
                logger.error("renewal reply carries no credential")
                continue
            failures = 0
            self.install(token)

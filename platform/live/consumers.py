"""The live swarm socket: a thin shell around the project's hub (live.hub) and the viewer's stream.

Connect: accept, check who may watch (swarm.permissions, answered from live.access_cache), join the hub, send
a snapshot. Then every hub flush goes out with this viewer's next `seq`. The browser may ask for
`resync` (at most once per `RESYNC_MIN_INTERVAL_S`); anything else it sends is logged and ignored.

The socket is accepted before anything else, and nothing is sent on it before the access check passes.
Daphne answers a refusal made before `accept` with a bare HTTP 403, which a browser reports as close
code 1006, the same as a portal too busy to answer in time (Daphne also refuses with 403 when the
handshake outlasts its connect timeout). Accepted first, every refusal is a close code the page acts on:

- 4403 (not allowed) and 4404 (no such project): final, the page does not retry;
- 4503 "try again later": this process already serves `settings.LIVE_MAX_VIEWERS` viewers, or the
  access check or the snapshot failed or took longer than its timeout; the page retries with backoff.
  (It plays the part of RFC 6455's 1013, which Daphne's autobahn does not let an application send:
  only 1000 and 3000-4999.)

Per viewer the handshake costs no database work in the steady state: the user comes from the session
cookie only when there is one (config.websocket_auth), verdicts are cached, viewers do not subscribe to
the channel layer (their hub does, once per project), and Channels' per-message hop to close stale
database connections is skipped (this consumer touches the database only through
`database_sync_to_async`, which does that itself).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from channels.consumer import get_handler_name
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from channels.layers import get_channel_layer
from django.conf import settings

from live import selectors
from live.access_cache import Verdict, viewer_access
from live.hub import ProjectHub, hubs
from live.inbound import owner_key
from live.protocol import ClientMessageError, dumps, parse_client_message
from live.stream import ViewerStream
from swarm.permissions import can_view_swarm

logger = logging.getLogger(__name__)

RESYNC_MIN_INTERVAL_S = 1.0
MAX_SNAPSHOT_ATTEMPTS = 3
ACCESS_TIMEOUT_S = 10.0
SNAPSHOT_TIMEOUT_S = 20.0
CLOSE_TRY_AGAIN_LATER = 4503
CLOSE_FORBIDDEN = 4403
CLOSE_NOT_FOUND = 4404


class ViewerSlots:
    """How many viewers this process holds (from accept to disconnect), against its cap."""

    def __init__(self) -> None:
        self.taken = 0

    def take(self) -> bool:
        if self.taken >= settings.LIVE_MAX_VIEWERS:
            return False
        self.taken += 1
        return True

    def give_back(self) -> None:
        self.taken -= 1


viewer_slots = ViewerSlots()


def check_access(slug: str, user: Any) -> Verdict:
    """The verdict for `user` on project `slug` (database work: runs in the database thread)."""
    project = selectors.project_for_slug(slug)
    if project is None:
        return Verdict("not_found")
    if not can_view_swarm(user, project):
        return Verdict("forbidden", project.pk)
    return Verdict("allowed", project.pk)


class SwarmConsumer(AsyncWebsocketConsumer):
    """`/ws/live/projects/<slug>/`: one project's swarm, as a snapshot and then coalesced diffs."""

    # Viewers need no channel of their own (their hub listens to the project's group for all of them):
    # for an alias that is not configured, Channels gives the consumer no layer and no receive task.
    channel_layer_alias = "live-viewers-need-no-channel"

    hub: ProjectHub | None = None
    holds_slot = False
    last_resync = 0.0

    async def dispatch(self, message: dict[str, Any]) -> None:
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"no handler for message type {message['type']}")
        await handler(message)

    async def connect(self) -> None:
        slug = self.scope["url_route"]["kwargs"]["slug"]
        user = self.scope.get("user")
        await self.accept()
        if not viewer_slots.take():
            logger.warning(
                "live: %d viewers already; asked a viewer of %r to come back later", viewer_slots.taken, slug
            )
            await self.close(code=CLOSE_TRY_AGAIN_LATER)
            return
        self.holds_slot = True
        verdict = await self._verdict(slug, user)
        if verdict is None:
            await self.close(code=CLOSE_TRY_AGAIN_LATER)
            return
        if verdict.outcome == "not_found":
            logger.info("live: refused a viewer of unknown project %r", slug)
            await self.close(code=CLOSE_NOT_FOUND)
            return
        if verdict.outcome == "forbidden" or verdict.project_id is None:
            logger.info("live: refused viewer %s of project %r", getattr(user, "pk", None), slug)
            await self.close(code=CLOSE_FORBIDDEN)
            return
        authenticated = bool(user.is_authenticated)
        self.viewer = {
            "owner_key": owner_key(settings.SECRET_KEY, user.pk) if authenticated else None,
            "staff": bool(authenticated and user.is_staff),
        }
        self.stream = ViewerStream()
        self.stream.begin_snapshot()
        try:
            self.hub, ticket = await asyncio.wait_for(
                hubs.join(self, project_id=verdict.project_id, slug=slug, layer=get_channel_layer()),
                SNAPSHOT_TIMEOUT_S,
            )
        except Exception:
            logger.exception("live: could not start watching %r; viewer asked to retry", slug)
            await self.close(code=CLOSE_TRY_AGAIN_LATER)
            return
        await self._send_snapshot(ticket)

    async def _verdict(self, slug: str, user: Any) -> Verdict | None:
        """May `user` watch `slug`? None when that could not be found out in time (try again later)."""
        if user is None:
            return Verdict("forbidden")
        key = (slug, user.pk if user.is_authenticated else None)
        check = database_sync_to_async(check_access)
        try:
            return await asyncio.wait_for(
                viewer_access.verdict(key, lambda: check(slug, user)), ACCESS_TIMEOUT_S
            )
        except TimeoutError:
            logger.warning(
                "live: access check for %r took over %.0f s; viewer asked to retry", slug, ACCESS_TIMEOUT_S
            )
        except Exception:
            logger.exception("live: access check for %r failed; viewer asked to retry", slug)
        return None

    async def _send_snapshot(self, ticket: int) -> None:
        assert self.hub is not None
        for _ in range(MAX_SNAPSHOT_ATTEMPTS):
            try:
                shared = await asyncio.wait_for(self.hub.snapshot(ticket), SNAPSHOT_TIMEOUT_S)
            except LookupError:
                await self.close(code=CLOSE_NOT_FOUND)
                return
            except TimeoutError:
                logger.warning(
                    "live: snapshot of %s took over %.0f s; viewer asked to retry",
                    self.hub.slug,
                    SNAPSHOT_TIMEOUT_S,
                )
                await self.close(code=CLOSE_TRY_AGAIN_LATER)
                return
            except Exception:
                logger.exception("live: snapshot of %s failed", self.hub.slug)
                await self.close(code=CLOSE_TRY_AGAIN_LATER)
                return
            if not self.stream.overflowed:
                break
            logger.info(
                "live: viewer of %s fell behind while its snapshot was read; reading again", self.hub.slug
            )
            self.stream.begin_snapshot()
            ticket = self.hub.add(self)
        body = (
            f'{{"server_time":{time.time()},"viewer":{dumps(self.viewer)},'
            f'"throughput":{shared.swarm_series},{shared.body}}}'
        )
        for text in self.stream.on_snapshot(body):
            await self.send(text_data=text)

    async def deliver(self, kind: str, body: str) -> None:
        """One hub flush to this viewer. Runs for every viewer on every flush, so it hands the frame
        straight to the ASGI send (what `self.send(text_data=...)` ends in) without the extra layers."""
        for text in self.stream.on_flush(kind, body):
            await self.base_send({"type": "websocket.send", "text": text})

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        try:
            parse_client_message(text_data)
        except ClientMessageError as exc:
            logger.info("live: ignored a browser message: %s", exc)
            return
        now = time.monotonic()
        if now - self.last_resync < RESYNC_MIN_INTERVAL_S or self.hub is None:
            logger.info("live: resync requested too often; ignored")
            return
        self.last_resync = now
        self.stream.begin_snapshot()
        await self._send_snapshot(self.hub.add(self))

    async def disconnect(self, code: int) -> None:
        if self.hub is not None:
            await hubs.leave(self, self.hub)
            self.hub = None
        if self.holds_slot:
            self.holds_slot = False
            viewer_slots.give_back()

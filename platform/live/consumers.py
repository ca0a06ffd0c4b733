"""The live swarm socket: a thin shell around the project's hub (live.hub) and the viewer's stream.

Connect: check who may watch (swarm.permissions), join the hub, accept, send a snapshot. Then every hub flush
goes out with this viewer's next `seq`. The browser may ask for `resync` (at most once per
`RESYNC_MIN_INTERVAL_S`); anything else it sends is logged and ignored. Refusals close the handshake with
4403 (not allowed) or 4404 (no such project).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer

from live import selectors
from live.hub import ProjectHub, hubs
from live.inbound import owner_key
from live.protocol import ClientMessageError, dumps, parse_client_message
from live.stream import ViewerStream
from swarm.permissions import can_view_swarm

logger = logging.getLogger(__name__)

RESYNC_MIN_INTERVAL_S = 1.0
MAX_SNAPSHOT_ATTEMPTS = 3
CLOSE_FORBIDDEN = 4403
CLOSE_NOT_FOUND = 4404
CLOSE_UNAVAILABLE = 4503


class SwarmConsumer(AsyncWebsocketConsumer):
    """`/ws/live/projects/<slug>/`: one project's swarm, as a snapshot and then coalesced diffs."""

    hub: ProjectHub | None = None

    async def connect(self) -> None:
        slug = self.scope["url_route"]["kwargs"]["slug"]
        user = self.scope.get("user")
        verdict = await database_sync_to_async(self._check_access)(slug, user)
        if verdict is None:
            logger.info("live: refused a viewer of unknown project %r", slug)
            await self.close(code=CLOSE_NOT_FOUND)
            return
        if verdict is False:
            logger.info("live: refused viewer %s of project %r", getattr(user, "pk", None), slug)
            await self.close(code=CLOSE_FORBIDDEN)
            return
        self.stream = ViewerStream()
        self.stream.begin_snapshot()
        self.last_resync = 0.0
        self.hub, ticket = await hubs.join(
            self, project_id=self.project_id, slug=slug, layer=self.channel_layer
        )
        await self.accept()
        await self._send_snapshot(ticket)

    def _check_access(self, slug: str, user: Any) -> bool | None:
        project = selectors.project_for_slug(slug)
        if project is None:
            return None
        if user is None or not can_view_swarm(user, project):
            return False
        self.project_id = project.pk
        from django.conf import settings

        self.viewer = {
            "owner_key": owner_key(settings.SECRET_KEY, user.pk) if user.is_authenticated else None,
            "staff": bool(user.is_staff),
        }
        return True

    async def _send_snapshot(self, ticket: int) -> None:
        assert self.hub is not None
        for _ in range(MAX_SNAPSHOT_ATTEMPTS):
            try:
                shared = await self.hub.snapshot(ticket)
            except LookupError:
                await self.close(code=CLOSE_NOT_FOUND)
                return
            except Exception:
                logger.exception("live: snapshot of %s failed", self.hub.slug)
                await self.close(code=CLOSE_UNAVAILABLE)
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

"""WebSocket consumers for projects: thin, one handler per event type."""

from __future__ import annotations

import logging
from typing import Any

from channels.generic.websocket import AsyncJsonWebsocketConsumer

from core.events import PROJECT_LISTING_GROUP, ProjectChangedEvent

logger = logging.getLogger(__name__)


class ProjectListingConsumer(AsyncJsonWebsocketConsumer):
    """Pushes `project.changed` events to browsers showing the public project listing (read-only)."""

    async def connect(self) -> None:
        await self.channel_layer.group_add(PROJECT_LISTING_GROUP, self.channel_name)
        await self.accept()

    async def disconnect(self, code: int) -> None:
        await self.channel_layer.group_discard(PROJECT_LISTING_GROUP, self.channel_name)

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        logger.debug("ignoring client message on the read-only project listing socket")

    async def decode_json(self, text_data: str) -> Any:
        try:
            return await super().decode_json(text_data)
        except ValueError:
            logger.info("malformed JSON on the project listing socket; ignored")
            return None

    async def project_changed(self, event: ProjectChangedEvent) -> None:
        await self.send_json(event)

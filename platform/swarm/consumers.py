"""`/ws/my-nodes/`: the signed-in volunteer's own nodes, live (the "My nodes" page).

Like the live swarm socket (`live.consumers`), it accepts first and then refuses with a close code the page
acts on: 4403 for a visitor who is not signed in (final, `frontend/src/live-socket.js` does not retry).
A signed-in user joins their own group (`core.events.user_nodes_group`), gets a snapshot of their nodes
(at most `MAX_NODES`, newest first) and then one `mynodes.node_changed` event per change: heartbeats, state
changes, the observer's probes. Nothing the browser sends is acted on.
"""

from __future__ import annotations

import logging
from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from core.events import OwnNode, OwnNodeChangedEvent, user_nodes_group

logger = logging.getLogger(__name__)

CLOSE_FORBIDDEN = 4403
MAX_NODES = 200


def own_nodes(user_pk: int) -> list[OwnNode]:
    from swarm.events import own_node
    from swarm.models import Node

    nodes = Node.objects.select_related("project").filter(user_id=user_pk).order_by("-created_at")
    return [own_node(node, node.project.slug) for node in nodes[:MAX_NODES]]


class MyNodesConsumer(AsyncJsonWebsocketConsumer):
    group: str | None = None

    async def connect(self) -> None:
        user = self.scope.get("user")
        await self.accept()
        if user is None or not user.is_authenticated:
            await self.close(code=CLOSE_FORBIDDEN)
            return
        self.group = user_nodes_group(user.pk)
        await self.channel_layer.group_add(self.group, self.channel_name)
        nodes = await database_sync_to_async(own_nodes)(user.pk)
        await self.send_json({"type": "mynodes.snapshot", "nodes": nodes})

    async def disconnect(self, code: int) -> None:
        if self.group is not None:
            await self.channel_layer.group_discard(self.group, self.channel_name)

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        logger.debug("ignoring a browser message on the My nodes socket")

    async def decode_json(self, text_data: str) -> Any:
        try:
            return await super().decode_json(text_data)
        except ValueError:
            logger.info("malformed JSON on the My nodes socket; ignored")
            return None

    async def mynodes_node_changed(self, event: OwnNodeChangedEvent) -> None:
        await self.send_json(event)

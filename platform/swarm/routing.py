"""WebSocket routes of the swarm app (collected by config.routing)."""

from __future__ import annotations

from django.urls import path

from swarm.consumers import MyNodesConsumer

websocket_urlpatterns = [path("ws/my-nodes/", MyNodesConsumer.as_asgi())]

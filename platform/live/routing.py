"""WebSocket routes of the live swarm views (collected by config.routing)."""

from __future__ import annotations

from django.urls import path

from live.consumers import SwarmConsumer

websocket_urlpatterns = [path("ws/live/projects/<slug:slug>/", SwarmConsumer.as_asgi())]

"""WebSocket routes for projects (collected by config.routing)."""

from __future__ import annotations

from django.urls import path

from projects.consumers import ProjectListingConsumer

websocket_urlpatterns = [path("ws/projects/", ProjectListingConsumer.as_asgi())]

"""All WebSocket routes, collected from each app's `routing.py`."""

from __future__ import annotations

from live.routing import websocket_urlpatterns as live_routes
from projects.routing import websocket_urlpatterns as project_routes

websocket_urlpatterns = [*project_routes, *live_routes]

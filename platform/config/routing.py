"""All WebSocket routes, collected from each app's `routing.py`."""

from __future__ import annotations

from live.routing import websocket_urlpatterns as live_routes
from projects.routing import websocket_urlpatterns as project_routes
from swarm.routing import websocket_urlpatterns as swarm_routes

websocket_urlpatterns = [*project_routes, *swarm_routes, *live_routes]

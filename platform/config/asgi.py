"""ASGI entry point served by Daphne: HTTP through Django, WebSockets through Channels.

`get_asgi_application()` runs first so the app registry is ready before consumers (and their models) are
imported. WebSockets get `scope["user"]` from `config.websocket_auth` (no session work for a browser
without a session cookie, and no wrapper around every message sent).
"""

from __future__ import annotations

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402

from config.routing import websocket_urlpatterns  # noqa: E402
from config.websocket_auth import SessionUserMiddleware  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": AllowedHostsOriginValidator(SessionUserMiddleware(URLRouter(websocket_urlpatterns))),
    }
)

"""Who is on the other end of a WebSocket: resolved once, at connect, and only when there is a session.

Channels' `AuthMiddlewareStack` loads a session and resolves the user for every socket (a hop to the
database thread even for a browser that has no session cookie), and wraps the socket's `send` so that
every outgoing message checks whether the session needs saving. A live swarm page pushes several
messages a second to each of hundreds of viewers, and WebSocket consumers here never write the session,
so this middleware does the one thing they need: `scope["user"]`, from the session cookie when there is
one (Django's own `auth.get_user`, session-hash check included), `AnonymousUser` without any database
work when there is none. `send` is passed through untouched.
"""

from __future__ import annotations

from importlib import import_module
from types import SimpleNamespace
from typing import Any

from channels.db import database_sync_to_async
from django.conf import settings
from django.contrib import auth
from django.contrib.auth.models import AnonymousUser
from django.http.cookie import parse_cookie

MAX_COOKIE_HEADER_BYTES = 8192  # Django's own cookies are far smaller; anything longer is not a session


def session_key_of(headers: list[tuple[bytes, bytes]]) -> str | None:
    """The session cookie's value from raw ASGI headers, or None (no cookie, or an absurd header)."""
    for name, value in headers:
        if name == b"cookie" and len(value) <= MAX_COOKIE_HEADER_BYTES:
            key = parse_cookie(value.decode("latin1")).get(settings.SESSION_COOKIE_NAME)
            if key:
                return key
    return None


def user_for_session(session_key: str) -> Any:
    """The signed-in user of a session (AnonymousUser if it is unknown, expired or its hash is stale)."""
    store = import_module(settings.SESSION_ENGINE).SessionStore(session_key)
    # get_user reads only `request.session`; a namespace with the session stands in for the request.
    return auth.get_user(SimpleNamespace(session=store))  # type: ignore[arg-type]


class SessionUserMiddleware:
    """Sets `scope["user"]` for WebSocket connections; HTTP is Django's business."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        if scope["type"] == "websocket" and "user" not in scope:
            key = session_key_of(scope.get("headers", []))
            user = AnonymousUser() if key is None else await database_sync_to_async(user_for_session)(key)
            scope = {**scope, "user": user}
        return await self.inner(scope, receive, send)

"""Swarm fixtures: a built agent wheel, node identities and a helper that posts signed bodies."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.test import Client
from django.utils import timezone

from accounts.models import User
from node_agent.identity import Identity
from node_agent.portal.signed_body import sign_body
from projects.models import Project
from swarm import services


@pytest.fixture(scope="session")
def agent_wheel_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The agent wheel built once per test session (a real `pip wheel` of node_agent/)."""
    from swarm.wheel import build_agent_wheel

    out = tmp_path_factory.mktemp("agent-wheel")
    build_agent_wheel(out_dir=out)
    return out


@pytest.fixture
def wheel_settings(settings: Any, agent_wheel_dir: Path) -> Path:
    settings.AGENT_WHEEL_DIR = agent_wheel_dir
    return agent_wheel_dir


@pytest.fixture
def node_key() -> Identity:
    return Identity.generate()


SignedPost = Callable[..., Any]


@pytest.fixture
def signed_post() -> SignedPost:
    """POST `body` to `path`, signed by `identity` (optionally at another time or with a fixed nonce)."""

    def post(
        path: str,
        identity: Identity,
        body: dict[str, Any],
        *,
        now: float | None = None,
        nonce: str | None = None,
        raw: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> Any:
        data, signed_headers = sign_body(identity, body, time.time() if now is None else now, nonce=nonce)
        http_headers = {**signed_headers, **(headers or {})}
        extra = {
            f"HTTP_{k.upper().replace('-', '_')}": v for k, v in http_headers.items() if k != "Content-Type"
        }
        return Client().post(
            path, data=raw if raw is not None else data, content_type="application/json", **extra
        )

    return post


@pytest.fixture
def join_code(volunteer: User) -> Callable[[Project], str]:
    def make(project: Project, user: User | None = None) -> str:
        return services.join_code_create(project=project, user=user or volunteer, now=timezone.now())[1]

    return make


@pytest.fixture
def joined(signed_post: SignedPost, join_code: Callable[[Project], str], node_key: Identity, project: Project,
           wheel_settings: Path) -> dict[str, Any]:  # fmt: skip
    """A node of `project` that traded a join code for a credential: the join response body."""
    response = signed_post(
        "/api/v1/agent/join",
        node_key,
        {"code": join_code(project), "agent_version": "0.1.0", "platform": "Linux"},
    )
    assert response.status_code == 201, response.content
    return response.json()


def heartbeat_body(identity: Identity, credential: str, **changes: Any) -> dict[str, Any]:
    body = {
        "credential": credential,
        "node_id": identity.node_id.hex(),
        "endpoint": "127.0.0.1:40000",
        "agent_version": "0.1.0",
        "platform": "Linux-x86_64",
        "role": "server",
        "experts": ["ffn.0.0", "ffn.0.1"],
        "requests": 10,
        "samples": 640,
        "failures": 0,
        "bytes_in": 1000,
        "bytes_out": 2000,
        "samples_per_s": 12.5,
        "uptime_s": 30.0,
        "peers": [{"node_id": "ab" * 20, "requests": 3}],
    }
    return body | changes


@pytest.fixture
def make_heartbeat() -> Callable[..., dict[str, Any]]:
    return heartbeat_body


@pytest.fixture
def no_rate_limit(settings: Any) -> Iterator[None]:
    settings.SWARM = {**settings.SWARM, "HEARTBEAT_BURST": 1000}
    yield


def loads(response: Any) -> dict[str, Any]:
    return json.loads(response.content)


Listener = Callable[[], dict[str, Any]]


@pytest.fixture
def listen() -> Iterator[Callable[[str], Listener]]:
    """Subscribe to a channel-layer group; the returned callable waits (5 s at most) for its next event."""
    layer = get_channel_layer()
    joined: list[tuple[str, str]] = []

    def subscribe(group: str) -> Listener:
        channel = async_to_sync(layer.new_channel)()
        async_to_sync(layer.group_add)(group, channel)
        joined.append((group, channel))

        async def next_event() -> dict[str, Any]:
            return await asyncio.wait_for(layer.receive(channel), timeout=5)

        return async_to_sync(next_event)

    yield subscribe
    for group, channel in joined:
        async_to_sync(layer.group_discard)(group, channel)

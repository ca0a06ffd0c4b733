"""The project-listing WebSocket, through the real ASGI application (origin check, auth stack, router).

Uses the Redis channel layer when REDIS_URL is set (as in CI), the in-memory one otherwise.
"""

from __future__ import annotations

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator

from config.asgi import application
from projects import services

pytestmark = pytest.mark.django_db(transaction=True)

LOCAL_ORIGIN = [(b"origin", b"http://localhost"), (b"host", b"localhost")]


async def test_listing_socket_delivers_creation_and_status_changes(researcher, project_fields) -> None:
    communicator = WebsocketCommunicator(application, "/ws/projects/", headers=LOCAL_ORIGIN)
    connected, _ = await communicator.connect(timeout=10)
    assert connected
    try:
        project = await database_sync_to_async(services.project_create)(
            owner=researcher, launch=True, **project_fields
        )
        created = await communicator.receive_json_from(timeout=10)
        assert created["type"] == "project.changed"
        assert created["project"]["slug"] == project.slug
        assert created["project"]["status"] == "active"
        assert created["project"]["url"] == f"/projects/{project.slug}/"

        await database_sync_to_async(services.project_pause)(project=project, actor=researcher)
        paused = await communicator.receive_json_from(timeout=10)
        assert (paused["project"]["slug"], paused["project"]["status_label"]) == (project.slug, "Paused")
    finally:
        await communicator.disconnect()


async def test_drafts_are_not_announced(researcher, project_fields) -> None:
    communicator = WebsocketCommunicator(application, "/ws/projects/", headers=LOCAL_ORIGIN)
    connected, _ = await communicator.connect(timeout=10)
    assert connected
    try:
        await database_sync_to_async(services.project_create)(owner=researcher, **project_fields)
        assert await communicator.receive_nothing(timeout=0.5)
    finally:
        await communicator.disconnect()


async def test_malformed_client_frames_are_ignored_not_fatal(researcher, project_fields) -> None:
    communicator = WebsocketCommunicator(application, "/ws/projects/", headers=LOCAL_ORIGIN)
    connected, _ = await communicator.connect(timeout=10)
    assert connected
    try:
        await communicator.send_to(text_data="{not json")
        await communicator.send_json_to({"type": "project.changed", "project": {}})
        assert await communicator.receive_nothing(timeout=0.3)
        project = await database_sync_to_async(services.project_create)(
            owner=researcher, launch=True, **project_fields
        )
        event = await communicator.receive_json_from(timeout=10)
        assert event["project"]["slug"] == project.slug
    finally:
        await communicator.disconnect()


async def test_foreign_origins_are_rejected() -> None:
    communicator = WebsocketCommunicator(
        application, "/ws/projects/", headers=[(b"origin", b"https://evil.example"), (b"host", b"localhost")]
    )
    connected, _ = await communicator.connect(timeout=10)
    assert not connected


async def test_unknown_socket_paths_are_refused() -> None:
    communicator = WebsocketCommunicator(application, "/ws/nothing-here/", headers=LOCAL_ORIGIN)
    with pytest.raises(ValueError, match="No route found"):
        await communicator.connect(timeout=1)

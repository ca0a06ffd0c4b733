"""Model exports: the owner's agent uploads, the owner downloads; everyone else is refused."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import pytest
from django.test import Client

from node_agent.identity import Identity
from node_agent.portal.schemas import EXPORT_HEADER
from node_agent.portal.signed_body import sign_body
from swarm.models import ProjectExport

pytestmark = pytest.mark.django_db


@pytest.fixture
def exports_dir(settings: Any, tmp_path: Path) -> Path:
    settings.EXPORTS_DIR = tmp_path / "exports"
    settings.SWARM = {**settings.SWARM, "EXPORT_MAX_BYTES": 4096, "EXPORTS_KEPT": 2}
    return settings.EXPORTS_DIR


def upload(identity: Identity, credential: str, data: bytes, **claims: Any) -> Any:
    body = {
        "credential": credential,
        "node_id": identity.node_id.hex(),
        "sha256": hashlib.sha256(data).hexdigest(),
        "size": len(data),
        **claims,
    }
    raw, headers = sign_body(identity, body, time.time())
    headers[EXPORT_HEADER] = raw.decode()
    extra = {f"HTTP_{k.upper().replace('-', '_')}": v for k, v in headers.items() if k != "Content-Type"}
    return Client().post("/api/v1/agent/export", data=data, content_type="application/octet-stream", **extra)


@pytest.fixture
def owner_node(
    signed_post: Any, join_code: Any, project: Any, researcher: Any, wheel_settings: Path
) -> tuple:
    key = Identity.generate()
    reply = signed_post(
        "/api/v1/agent/join",
        key,
        {"code": join_code(project, researcher), "agent_version": "0.1.0", "platform": "Linux"},
    )
    assert reply.status_code == 201, reply.content
    return key, reply.json()["credential"]


def test_the_owner_uploads_and_downloads_the_latest_export(
    owner_node: tuple, exports_dir: Path, project: Any, researcher: Any, logged_in: Any
) -> None:
    key, credential = owner_node
    assert project.owner_id == researcher.pk
    for content in (b"first export", b"second export", b"third export"):
        response = upload(key, credential, content)
        assert response.status_code == 201, response.content
    assert ProjectExport.objects.count() == 2  # EXPORTS_KEPT: the oldest file went with its row
    assert len(list((exports_dir / project.slug).iterdir())) == 2
    browser = logged_in(researcher)
    page = browser.get(f"/projects/{project.slug}/swarm/").content.decode()
    assert "Download the latest export" in page
    download = browser.get(f"/projects/{project.slug}/export/")
    assert download.status_code == 200 and b"".join(download.streaming_content) == b"third export"


def test_others_cannot_upload_or_download(
    joined: dict[str, Any], node_key: Identity, owner_node: tuple, exports_dir: Path, project: Any,
    volunteer: Any, logged_in: Any, client: Any,
) -> None:  # fmt: skip
    assert upload(node_key, joined["credential"], b"a volunteer's file").status_code == 403
    key, credential = owner_node
    assert upload(key, credential, b"x" * 5000).status_code == 413  # over EXPORT_MAX_BYTES
    assert upload(key, credential, b"content", sha256="0" * 64).status_code == 400  # not what was signed
    assert upload(key, credential, b"content", size=3).status_code == 400  # Content-Length differs
    assert upload(key, "not-a-credential", b"content").status_code in (400, 401)
    bare = Client().post("/api/v1/agent/export", data=b"x", content_type="application/octet-stream")
    assert bare.status_code in (400, 401)
    assert not ProjectExport.objects.exists()
    assert upload(key, credential, b"content").status_code == 201
    assert logged_in(volunteer).get(f"/projects/{project.slug}/export/").status_code == 404
    assert client.get(f"/projects/{project.slug}/export/").status_code == 404
    assert (
        "Download the latest export"
        not in logged_in(volunteer).get(f"/projects/{project.slug}/swarm/").content.decode()
    )

"""Model exports: the owner's agent uploads, the owner downloads; everyone else is refused."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import pytest
from django.core.cache import cache
from django.test import Client

from node_agent.identity import Identity
from node_agent.portal.schemas import EXPORT_HEADER, EXPORT_SHA256_HEADER
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


LATEST = "/api/v1/agent/export/latest"


def fetch_body(identity: Identity, credential: str, project: str) -> dict[str, Any]:
    return {"credential": credential, "node_id": identity.node_id.hex(), "project": project}


def test_a_member_node_downloads_the_latest_export(
    joined: dict[str, Any], node_key: Identity, owner_node: tuple, exports_dir: Path, project: Any,
    signed_post: Any,
) -> None:  # fmt: skip
    body = fetch_body(node_key, joined["credential"], project.slug)
    none_yet = signed_post(LATEST, node_key, body)
    assert none_yet.status_code == 404 and none_yet.json()["error"] == "no_export"
    key, credential = owner_node
    for content in (b"older export", b"newest export"):
        assert upload(key, credential, content).status_code == 201
    reply = signed_post(LATEST, node_key, body)
    assert reply.status_code == 200, reply.content
    assert b"".join(reply.streaming_content) == b"newest export"
    assert reply[EXPORT_SHA256_HEADER] == hashlib.sha256(b"newest export").hexdigest()
    assert reply["Content-Length"] == str(len(b"newest export"))
    assert reply["Content-Type"] == "application/octet-stream"
    replayed = signed_post(LATEST, node_key, body, nonce="ab" * 8)
    assert replayed.status_code == 200
    assert signed_post(LATEST, node_key, body, nonce="ab" * 8).status_code == 409  # a nonce is used once


def test_only_members_with_a_valid_signature_download(
    joined: dict[str, Any], node_key: Identity, owner_node: tuple, exports_dir: Path, project: Any,
    make_project: Any, other_researcher: Any, join_code: Any, signed_post: Any, settings: Any,
) -> None:  # fmt: skip
    key, credential = owner_node
    assert upload(key, credential, b"the export").status_code == 201
    other = make_project(owner=other_researcher, title="Other project", slug="other-project")
    stranger = Identity.generate()
    joined_other = signed_post(
        "/api/v1/agent/join",
        stranger,
        {"code": join_code(other), "agent_version": "0.1.0", "platform": "Linux"},
    )
    assert joined_other.status_code == 201, joined_other.content
    not_member = signed_post(
        LATEST, stranger, fetch_body(stranger, joined_other.json()["credential"], project.slug)
    )
    assert not_member.status_code == 403 and not_member.json()["error"] == "not_member"
    # Another node's credential, or a body signed by another key, is refused before anything is read.
    borrowed = signed_post(LATEST, stranger, fetch_body(node_key, joined["credential"], project.slug))
    assert borrowed.status_code in (400, 401)
    body = fetch_body(node_key, joined["credential"], project.slug)
    raw, headers = sign_body(node_key, body, time.time())
    tampered = signed_post(
        LATEST, node_key, body, raw=raw.replace(b"node_id", b"node_id", 1) + b" ", headers=headers
    )
    assert tampered.status_code == 401
    assert signed_post(LATEST, node_key, {**body, "extra": 1}).status_code == 400
    settings.SWARM = {**settings.SWARM, "RATE_EXPORT_FETCH_PER_KEY": 2}
    cache.clear()  # count from zero: the refused bodies above were signed, so they counted too
    statuses = [signed_post(LATEST, node_key, body).status_code for _ in range(3)]
    assert statuses == [200, 200, 429]


def _export_file(tmp_path: Path) -> bytes:
    """A real `node-agent export` file holding one trained ffn expert (cell ffn.3 at step 42)."""
    from node_agent.moe.server.backend import create_backends
    from node_agent.training.export import CellEntry, ExportSpec, Manifest, write_export

    (backend,) = create_backends(["ffn.3"], "ffn", 16, seed=1).values()
    tensors = {f"experts.ffn.3.{k}": v for k, v in backend.module.state_dict().items()}
    manifest = Manifest(ExportSpec(grid=(8,), hidden_dim=16), [CellEntry("ffn.3", 42, "ab", 1.0)])
    return write_export(tmp_path / "model.safetensors", tensors, manifest).read_bytes()


@pytest.mark.django_db(transaction=True)
def test_the_agent_downloads_verifies_and_starts_cells_from_the_export(
    joined: dict[str, Any], node_key: Identity, owner_node: tuple, exports_dir: Path, project: Any,
    live_server: Any, tmp_path: Path, settings: Any,
) -> None:  # fmt: skip
    import asyncio

    import torch

    from node_agent.moe.server.backend import create_backends
    from node_agent.portal.client import PortalClient, PortalUnreachable
    from node_agent.portal.latest_export import LATEST_EXPORT_FILE, portal_export_fallback
    from node_agent.training.export import MODULE_PREFIX

    settings.SWARM = {**settings.SWARM, "EXPORT_MAX_BYTES": 1 << 20}
    client = PortalClient(live_server.url)
    credential = joined["credential"]
    dest = tmp_path / "agent" / LATEST_EXPORT_FILE
    assert client.fetch_export(node_key, credential, project.slug, dest) is None  # none uploaded yet
    key, owner_credential = owner_node
    data = _export_file(tmp_path)
    assert upload(key, owner_credential, data).status_code == 201
    said: list[str] = []
    fallback = portal_export_fallback(
        client, node_key, lambda: credential, project.slug, dest.parent, said.append
    )
    found = asyncio.run(fallback("ffn.3"))
    assert dest.read_bytes() == data and "downloaded" in said[0]
    assert found is not None
    state, step = found
    (expected,) = create_backends(["ffn.3"], "ffn", 16, seed=1).values()
    assert step == 42
    for name, value in expected.module.state_dict().items():
        assert torch.equal(state[MODULE_PREFIX + name], value)
    assert asyncio.run(fallback("ffn.5")) is None  # a cell the export lacks starts fresh

    with pytest.raises(PortalUnreachable, match=r"larger than|over"):
        client.fetch_export(node_key, credential, project.slug, tmp_path / "small", max_bytes=100)
    stored = next((exports_dir / project.slug).iterdir())
    stored.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # tampered at rest: the sha256 no longer holds
    with pytest.raises(PortalUnreachable, match="sha256"):
        client.fetch_export(node_key, credential, project.slug, dest)
    assert dest.read_bytes() == data and not dest.with_name(dest.name + ".part").exists()
    pickled = b"\x80\x04\x95" + b"cos\nsystem\n" + b"\x00" * 64  # sha256 matches, but it is no safetensors
    assert upload(key, owner_credential, pickled).status_code == 201
    with pytest.raises(PortalUnreachable, match="safetensors"):
        client.fetch_export(node_key, credential, project.slug, tmp_path / "pickle.safetensors")
    assert not (tmp_path / "pickle.safetensors").exists()

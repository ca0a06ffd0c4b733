"""Model exports uploaded by a project owner's agent, and the file the owner downloads from the dashboard.

`POST /api/v1/agent/export`: the raw body is the safetensors file `node-agent export` wrote; the signed
`X-Colearn-Export` header (`ExportUpload`: credential, node id, sha256, size, ts, nonce) says what it is.
Only a node whose credential belongs to the project's owner may upload (the researcher's own agent). The body
is streamed to a temporary file while hashed; it is kept only when its size and sha256 match the signed
claim, then the project keeps its `EXPORTS_KEPT` newest files. Nothing reads the file's content here: the
portal stores bytes and hands them back to the owner, and to member nodes.

`POST /api/v1/agent/export/latest`: a node of the project (signed body `ExportFetch`) gets the newest file,
so a volunteer taking over a cell no live replica holds starts from it rather than from random weights.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Protocol

from django.conf import settings
from django.db import transaction

from node_agent.portal.schemas import ExportFetch, ExportUpload
from swarm import services
from swarm.errors import InvalidRequest, NotFound, NotPermitted, TooLarge
from swarm.models import ProjectExport
from swarm.telemetry import _authorised_node

logger = logging.getLogger(__name__)

CHUNK = 1 << 20


class Readable(Protocol):
    """A request body (Django's `HttpRequest.read`) or a file."""

    def read(self, size: int, /) -> bytes: ...


def export_path(export: ProjectExport) -> Path:
    return Path(settings.EXPORTS_DIR) / export.project.slug / f"{export.sha256}.safetensors"


def export_receive(
    *, public_key: bytes, upload: ExportUpload, stream: Readable, declared: int, now: datetime
) -> ProjectExport:
    """Check the uploader, stream the body to disk while hashing, keep it if it is what was signed."""
    limit = settings.SWARM["EXPORT_MAX_BYTES"]
    if upload.size > limit or declared > limit:
        raise TooLarge("too_large", f"exports are limited to {limit} bytes")
    if declared != upload.size:
        raise InvalidRequest("size_mismatch", "Content-Length is not the signed size")
    with transaction.atomic():
        node = _authorised_node(
            public_key=public_key, token=upload.credential, node_id=upload.node_id, now=now
        )
        if node.user_id != node.project.owner_id:
            raise NotPermitted("not_owner", "only the project owner's agent uploads exports")
        services.nonce_record(public_key=public_key, nonce=upload.nonce, now=now)
        project = node.project
    directory = Path(settings.EXPORTS_DIR) / project.slug
    directory.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    received = 0
    handle, temporary = tempfile.mkstemp(dir=directory, suffix=".part")
    try:
        with os.fdopen(handle, "wb") as out:
            while received < upload.size:
                chunk = stream.read(min(CHUNK, upload.size - received))
                if not chunk:
                    break
                received += len(chunk)
                digest.update(chunk)
                out.write(chunk)
        if received != upload.size or digest.hexdigest() != upload.sha256:
            raise InvalidRequest("digest_mismatch", "the body is not the file the header signed")
        export = ProjectExport.objects.create(
            project=project, node=node, uploaded_at=now, size=received, sha256=upload.sha256
        )
        os.replace(temporary, export_path(export))
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
    _prune(project.pk)
    logger.info(
        "export %s (%d bytes) of %s uploaded by node %s",
        upload.sha256[:12],
        received,
        project.slug,
        node.short_id,
    )
    return export


def _prune(project_id: int) -> None:
    kept = settings.SWARM["EXPORTS_KEPT"]
    for old in ProjectExport.objects.filter(project_id=project_id).select_related("project")[kept:]:
        path = export_path(old)
        if (
            not ProjectExport.objects.filter(project_id=project_id, sha256=old.sha256)
            .exclude(pk=old.pk)
            .exists()
        ):
            path.unlink(missing_ok=True)
        old.delete()


def latest_export(*, project_id: int) -> ProjectExport | None:
    return ProjectExport.objects.filter(project_id=project_id).select_related("project").first()


def export_for_member(
    *, public_key: bytes, request: ExportFetch, now: datetime
) -> tuple[ProjectExport, Path]:
    """The newest export of the project a member node asks for, and its file (NotFound when none)."""
    with transaction.atomic():
        node = _authorised_node(
            public_key=public_key, token=request.credential, node_id=request.node_id, now=now
        )
        if node.project.slug != request.project:
            raise NotPermitted("not_member", "this node is not a member of that project")
        services.nonce_record(public_key=public_key, nonce=request.nonce, now=now)
    export = latest_export(project_id=node.project_id)
    path = export_path(export) if export is not None else None
    if export is None or path is None or not path.is_file():
        raise NotFound("no_export", "the project has no export yet")
    logger.info("export %s of %s sent to node %s", export.sha256[:12], request.project, node.short_id)
    return export, path

"""HTTP calls from the agent to the portal: standard library only (``urllib.request``), always with a timeout.

The calls block; asyncio code runs them with ``asyncio.to_thread`` so the event loop (DHT, WebRTC,
expert batching) never waits on the portal. Every failure is one of two errors:

* :class:`PortalUnreachable`: no answer, a timeout, a 5xx or a garbled reply: retry later with backoff.
* :class:`PortalRefused`: the portal answered 4xx with ``{"error": code, "detail": text}``: the request
  itself is wrong (expired code, banned node, ...); ``retry_after`` is set for 429.

Endpoints (:mod:`node_agent.portal.schemas` holds the body formats): ``GET /api/v1/projects/<slug>/config``,
``POST /api/v1/agent/{join,renew,heartbeat,metrics}`` (bodies signed with the node key).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from node_agent.identity import Identity
from node_agent.portal.schemas import (
    API_PREFIX,
    EXPORT_HEADER,
    EXPORT_SHA256_HEADER,
    ExportFetchBody,
    ExportUploadBody,
    HeartbeatBody,
    JoinBody,
    MetricsBody,
    RenewBody,
)
from node_agent.portal.signed_body import sign_body

__all__ = [
    "FATAL_REFUSALS",
    "PortalClient",
    "PortalError",
    "PortalRefused",
    "PortalReply",
    "PortalUnreachable",
    "normalise_portal_url",
]

logger = logging.getLogger(__name__)

#: Largest reply read from the portal (a project config or a credential is a few KiB).
MAX_REPLY_BYTES = 1024 * 1024
#: The largest export a node downloads (the portal's own default cap is 512 MiB).
MAX_EXPORT_BYTES = 2 * 2**30
#: safetensors refuses headers over 100 MB; so do we, before parsing one.
MAX_SAFETENSORS_HEADER = 100_000_000
#: Portal error codes after which this node must stop (the owner or an admin banned it).
FATAL_REFUSALS = frozenset({"banned", "node_banned", "user_banned", "revoked", "credential_revoked"})


class PortalError(Exception):
    """Base of every portal call failure."""


class PortalUnreachable(PortalError):
    """No usable answer (connection refused, timeout, 5xx, not JSON): the portal may be down; retry."""


class PortalRefused(PortalError):
    """The portal refused the request (4xx); ``code`` is its machine-readable error."""

    def __init__(self, status: int, code: str, detail: str = "", retry_after: float | None = None) -> None:
        super().__init__(f"HTTP {status} {code}" + (f": {detail}" if detail else ""))
        self.status = status
        self.code = code
        self.detail = detail
        self.retry_after = retry_after

    @property
    def fatal(self) -> bool:
        """The node is banned or its credential revoked: it must stop, not retry."""
        return self.code in FATAL_REFUSALS


@dataclass(frozen=True, slots=True)
class PortalReply:
    status: int
    data: dict[str, Any]


def normalise_portal_url(url: str) -> str:
    """``127.0.0.1:8000`` or ``http://host/`` -> ``http://host``; ValueError if unusable."""
    text = url.strip()
    if "://" not in text:
        text = "http://" + text
    parts = urllib.parse.urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"portal URL must be http(s)://host[:port], got {url!r}")
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))


class PortalClient:
    """Blocking, thread-safe calls to one portal; ``clock`` gives the ``ts`` of signed bodies."""

    def __init__(self, base_url: str, *, timeout: float = 10.0, clock: Callable[[], float] | None = None):
        self.base_url = normalise_portal_url(base_url)
        self.timeout = timeout
        self.clock = clock or time.time

    # ---- endpoints ---------------------------------------------------------------------------------------

    def project_config(self, slug: str) -> dict[str, Any]:
        quoted = urllib.parse.quote(slug, safe="")
        return self.request("GET", f"{API_PREFIX}projects/{quoted}/config").data

    def join(self, identity: Identity, code: str, agent_version: str, platform: str) -> PortalReply:
        """201 with a credential, or 202 ``{"status": "pending_approval"}`` (poll with the same code)."""
        body = JoinBody(code=code, agent_version=agent_version, platform=platform)
        return self.post_signed("agent/join", identity, body)

    def join_until_approved(
        self,
        identity: Identity,
        code: str,
        agent_version: str,
        platform: str,
        *,
        poll_interval: float = 5.0,
        max_wait: float = 3600.0,
        on_pending: Callable[[], None] | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> dict[str, Any]:
        """Trade the code for a credential, polling while an approval-gated project holds the node.

        Returns the 201 body (``credential``, ``expires_at``, ``node``, ``config``). A portal that is
        briefly unreachable is retried at the poll interval; a refusal ends the wait at once.
        """
        deadline = time.monotonic() + max_wait
        told = False
        while True:
            try:
                reply = self.join(identity, code, agent_version, platform)
            except PortalUnreachable as exc:
                if time.monotonic() + poll_interval > deadline:
                    raise
                logger.warning("portal unreachable while joining (%s); retrying in %.0fs", exc, poll_interval)
            else:
                if reply.status != 202:
                    if not isinstance(reply.data.get("credential"), str):
                        raise PortalUnreachable(f"join answered {reply.status} without a credential")
                    return reply.data
                if not told and on_pending is not None:
                    on_pending()
                told = True
                if time.monotonic() + poll_interval > deadline:
                    raise PortalRefused(202, "approval_timeout", f"not approved within {max_wait:.0f}s")
            sleep(poll_interval)

    def renew(self, identity: Identity, credential: str) -> PortalReply:
        return self.post_signed("agent/renew", identity, RenewBody(credential=credential))

    def heartbeat(self, identity: Identity, body: HeartbeatBody) -> PortalReply:
        return self.post_signed("agent/heartbeat", identity, body)

    def metrics(self, identity: Identity, body: MetricsBody) -> PortalReply:
        return self.post_signed("agent/metrics", identity, body)

    # ---- transport ---------------------------------------------------------------------------------------

    def post_signed(self, endpoint: str, identity: Identity, body: msgspec.Struct) -> PortalReply:
        """Sign ``body`` (a body struct of :mod:`node_agent.portal.schemas`) with ``ts`` from our clock."""
        raw, headers = sign_body(identity, body, self.clock())
        return self.request("POST", f"{API_PREFIX}{endpoint}", raw, headers)

    def upload_export(self, identity: Identity, credential: str, data: bytes) -> PortalReply:
        """Upload a `node-agent export` file (the project owner's agent only); the signed header names its
        sha256 and size, so the portal keeps exactly these bytes."""

        body = ExportUploadBody(
            credential=credential,
            node_id=identity.node_id.hex(),
            sha256=hashlib.sha256(data).hexdigest(),
            size=len(data),
        )
        raw, headers = sign_body(identity, body, self.clock())
        headers = {**headers, EXPORT_HEADER: raw.decode(), "Content-Type": "application/octet-stream"}
        return self.request("POST", f"{API_PREFIX}agent/export", data, headers)

    def fetch_export(
        self,
        identity: Identity,
        credential: str,
        project: str,
        dest: Path,
        *,
        max_bytes: int = MAX_EXPORT_BYTES,
        deadline_s: float = 600.0,
    ) -> str | None:
        """Download the project's latest export to ``dest``; its sha256, or None when it has none (404).

        The file is streamed to ``dest`` plus ``.part`` and renamed only when it is at most ``max_bytes``,
        arrived within ``deadline_s``, matches the sha256 the portal sent and is laid out as safetensors
        (`is_safetensors`: never a pickle). Anything else raises PortalUnreachable and leaves ``dest`` alone.
        """
        body = ExportFetchBody(credential=credential, node_id=identity.node_id.hex(), project=project)
        raw, headers = sign_body(identity, body, self.clock())
        url = f"{self.base_url}{API_PREFIX}agent/export/latest"
        request = urllib.request.Request(url, data=raw, method="POST", headers=headers)
        part = dest.with_name(dest.name + ".part")
        deadline = time.monotonic() + deadline_s
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                expected = str(response.headers.get(EXPORT_SHA256_HEADER) or "").lower()
                if not re.fullmatch("[0-9a-f]{64}", expected):
                    raise PortalUnreachable(f"{url}: no valid {EXPORT_SHA256_HEADER} header")
                declared = response.headers.get("Content-Length")
                if declared is not None and declared.isdigit() and int(declared) > max_bytes:
                    raise PortalUnreachable(f"{url}: export of {declared} bytes is over {max_bytes}")
                dest.parent.mkdir(parents=True, exist_ok=True)
                digest, size = hashlib.sha256(), 0
                with part.open("wb") as out:
                    while chunk := response.read(1 << 20):
                        size += len(chunk)
                        if size > max_bytes:
                            raise PortalUnreachable(f"{url}: export larger than {max_bytes} bytes")
                        if time.monotonic() > deadline:
                            raise PortalUnreachable(f"{url}: export not received within {deadline_s:.0f}s")
                        digest.update(chunk)
                        out.write(chunk)
        except urllib.error.HTTPError as exc:
            with exc:
                text = exc.read(MAX_REPLY_BYTES + 1) if exc.fp is not None else b""
            if exc.code == 404 and b"no_export" in text:
                return None
            self._raise_for(exc.code, text, exc.headers.get("Retry-After") if exc.headers else None, url)
            raise  # unreachable: _raise_for always raises
        except (urllib.error.URLError, TimeoutError, OSError, ValueError) as exc:
            part.unlink(missing_ok=True)
            raise PortalUnreachable(f"POST {url}: {getattr(exc, 'reason', exc)}") from None
        except PortalUnreachable:
            part.unlink(missing_ok=True)
            raise
        if digest.hexdigest() != expected or not is_safetensors(part):
            part.unlink(missing_ok=True)
            raise PortalUnreachable(f"{url}: the export is not the safetensors file its sha256 names")
        os.replace(part, dest)
        return expected

    def request(
        self, method: str, path: str, data: bytes | None = None, headers: Mapping[str, str] | None = None
    ) -> PortalReply:
        url = self.base_url + path
        request = urllib.request.Request(url, data=data, method=method, headers=dict(headers or {}))
        request.add_header("Accept", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                status, raw = response.status, response.read(MAX_REPLY_BYTES + 1)
        except urllib.error.HTTPError as exc:
            with exc:
                raw = exc.read(MAX_REPLY_BYTES + 1) if exc.fp is not None else b""
            self._raise_for(exc.code, raw, exc.headers.get("Retry-After") if exc.headers else None, url)
        except (urllib.error.URLError, TimeoutError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            raise PortalUnreachable(f"{method} {url}: {reason}") from None
        return PortalReply(status, _json_object(raw, url))

    def _raise_for(self, status: int, raw: bytes, retry_after: str | None, url: str) -> None:
        if status >= 500 or status < 400:
            raise PortalUnreachable(f"{url}: HTTP {status}")
        try:
            data = _json_object(raw, url)
        except PortalUnreachable:
            data = {}
        error, text = data.get("error"), data.get("detail")
        code = error if isinstance(error, str) else f"http_{status}"
        detail = text if isinstance(text, str) else ""
        raise PortalRefused(status, code, detail, _parse_retry_after(retry_after))


def is_safetensors(path: Path) -> bool:
    """Whether the file is laid out as safetensors: an 8-byte little-endian header length, then a JSON
    object that fits in the file. A pickle (or anything executable on load) never passes."""
    try:
        with path.open("rb") as handle:
            prefix = handle.read(8)
            if len(prefix) != 8:
                return False
            length = int.from_bytes(prefix, "little")
            if not 2 <= length <= min(MAX_SAFETENSORS_HEADER, path.stat().st_size - 8):
                return False
            header = json.loads(handle.read(length))
    except (OSError, ValueError, UnicodeDecodeError):
        return False
    return isinstance(header, dict)


def _json_object(raw: bytes, url: str) -> dict[str, Any]:
    if len(raw) > MAX_REPLY_BYTES:
        raise PortalUnreachable(f"{url}: reply larger than {MAX_REPLY_BYTES} bytes")
    if not raw:
        return {}
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise PortalUnreachable(f"{url}: reply is not JSON") from None
    if not isinstance(data, dict):
        raise PortalUnreachable(f"{url}: reply is not a JSON object")
    return data


def _parse_retry_after(value: str | None) -> float | None:
    """Retry-After in seconds (RFC 9110 section 10.2.3); the HTTP-date form is ignored (None)."""
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return seconds if 0 <= seconds <= 86400 else None

"""Credentials: the token the portal signs for one node key in one project, checked offline by any peer.

The portal signs ``{"v", "cid", "project", "user", "node", "iat", "exp"}`` (msgpack, :mod:`node_agent.wire`)
with its Ed25519 key; the token is the unpadded base64url of msgpack ``{"p": payload_bytes, "s": signature}``.
Any peer holding the project's portal public key checks it with :func:`verify_credential`. The signed bytes
are a domain prefix plus the payload, so a credential signature can never be replayed as a body, DHT record
or message signature. Pure: no sockets, no clocks (``now`` is passed in).
"""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from node_agent.identity import PUBLIC_KEY_BYTES, Identity, node_id_from_public_key, verify
from node_agent.portal.errors import CredentialError
from node_agent.wire import WireError, pack, unpack

__all__ = [
    "CREDENTIAL_ISSUE_SKEW",
    "MAX_TOKEN_LENGTH",
    "PROTOCOL_VERSION",
    "Credential",
    "issue_credential",
    "peek_credential",
    "verify_credential",
]

PROTOCOL_VERSION = 1
MAX_TOKEN_LENGTH = 1024
#: A credential issued this far in the future (portal clock ahead of ours) is still accepted.
CREDENTIAL_ISSUE_SKEW = 300.0

_CREDENTIAL_DOMAIN = b"colearn-credential-v1\x00"


@dataclass(frozen=True, slots=True)
class Credential:
    """A verified credential: who (``user``) may run which node key in which project, until when."""

    cid: str
    project: str
    user: int
    node_public_key: bytes
    issued_at: float
    expires_at: float
    token: str

    @property
    def node_id(self) -> bytes:
        return node_id_from_public_key(self.node_public_key)

    def remaining(self, now: float) -> float:
        return self.expires_at - now


def _b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_decode(text: str) -> bytes:
    padded = text + "=" * (-len(text) % 4)
    return base64.b64decode(padded, altchars=b"-_", validate=True)


def issue_credential(
    portal_identity: Identity,
    *,
    cid: str,
    project: str,
    user: int,
    node_public_key: bytes,
    now: float,
    ttl: float,
) -> str:
    """Sign a credential token (portal side). ``ttl`` seconds from ``now``."""
    if not isinstance(node_public_key, bytes) or len(node_public_key) != PUBLIC_KEY_BYTES:
        raise ValueError("node_public_key must be 32 raw Ed25519 public key bytes")
    if not cid or not project or ttl <= 0:
        raise ValueError("a credential needs a cid, a project and a positive ttl")
    payload = pack(
        {
            "v": PROTOCOL_VERSION,
            "cid": str(cid),
            "project": str(project),
            "user": int(user),
            "node": node_public_key,
            "iat": float(now),
            "exp": float(now + ttl),
        }
    )
    signature = portal_identity.sign(_CREDENTIAL_DOMAIN + payload)
    return _b64url_encode(pack({"p": payload, "s": signature}))


def _decode_credential(token: object) -> tuple[bytes, bytes, dict[str, Any]]:
    if not isinstance(token, str) or not 0 < len(token) <= MAX_TOKEN_LENGTH:
        raise CredentialError("malformed", f"token must be a string of 1..{MAX_TOKEN_LENGTH} characters")
    try:
        outer = unpack(_b64url_decode(token), MAX_TOKEN_LENGTH)
    except (binascii.Error, ValueError, WireError) as exc:
        raise CredentialError("malformed", f"undecodable token: {exc}") from None
    if not isinstance(outer, dict) or set(outer) != {"p", "s"}:
        raise CredentialError("malformed", "token must be a map of p and s")
    payload_bytes, signature = outer["p"], outer["s"]
    if not isinstance(payload_bytes, bytes) or not isinstance(signature, bytes):
        raise CredentialError("malformed", "token p and s must be bytes")
    try:
        payload = unpack(payload_bytes, MAX_TOKEN_LENGTH)
    except WireError as exc:
        raise CredentialError("malformed", f"undecodable payload: {exc}") from None
    if not isinstance(payload, dict):
        raise CredentialError("malformed", "payload must be a map")
    return payload_bytes, signature, payload


def _credential_fields(payload: dict[str, Any], token: str) -> Credential:
    if payload.get("v") != PROTOCOL_VERSION:
        raise CredentialError("malformed", f"unsupported credential version {payload.get('v')!r}")
    cid, project, user, node = (
        payload.get("cid"),
        payload.get("project"),
        payload.get("user"),
        payload.get("node"),
    )
    iat, exp = payload.get("iat"), payload.get("exp")
    if not isinstance(cid, str) or not cid or not isinstance(project, str) or not project:
        raise CredentialError("malformed", "cid and project must be non-empty strings")
    if isinstance(user, bool) or not isinstance(user, int):
        raise CredentialError("malformed", "user must be an integer")
    if not isinstance(node, bytes) or len(node) != PUBLIC_KEY_BYTES:
        raise CredentialError("malformed", "node must be a 32-byte public key")
    return Credential(cid, project, user, node, _unix_time("iat", iat), _unix_time("exp", exp), token)


def _unix_time(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise CredentialError("malformed", f"{name} must be a finite unix time")
    return float(value)


def verify_credential(
    token: str,
    *,
    portal_public_key: bytes,
    now: float,
    project: str | None = None,
    node_public_key: bytes | None = None,
    revoked: Iterable[str] = frozenset(),
) -> Credential:
    """Check a token offline; raise :class:`CredentialError` with the first failing reason.

    Order: malformed, bad_signature (nothing else is trusted before the signature holds), expired,
    wrong_project, wrong_node, revoked.
    """
    payload_bytes, signature, payload = _decode_credential(token)
    if not verify(portal_public_key, _CREDENTIAL_DOMAIN + payload_bytes, signature):
        raise CredentialError("bad_signature", "not signed by this project's portal key")
    credential = _credential_fields(payload, token)
    if credential.expires_at <= now:
        raise CredentialError("expired", f"expired {now - credential.expires_at:.0f}s ago")
    if credential.issued_at > now + CREDENTIAL_ISSUE_SKEW:
        raise CredentialError("malformed", "issued in the future")
    if project is not None and credential.project != project:
        raise CredentialError("wrong_project", f"issued for {credential.project!r}, not {project!r}")
    if node_public_key is not None and credential.node_public_key != node_public_key:
        raise CredentialError("wrong_node", "issued to another node key")
    if credential.cid in revoked:
        raise CredentialError("revoked", f"credential {credential.cid} is revoked")
    return credential


def peek_credential(token: str) -> Credential:
    """Decode a token WITHOUT checking its signature (the agent reading its own expiry); never trust it."""
    _, _, payload = _decode_credential(token)
    return _credential_fields(payload, token)

"""Formats the portal and the node agent share: credentials, signed HTTP bodies, telemetry, revocations.

Pure (sans-IO): no sockets, no clocks (``now`` is always passed in), no torch, no Django; the portal
imports this module as it is, so both sides agree byte for byte.

* **Credential** (design brief section 3): the portal signs ``{"v", "cid", "project", "user", "node",
  "iat", "exp"}`` (msgpack, :mod:`node_agent.wire`) with its Ed25519 key; the token is the unpadded
  base64url of msgpack ``{"p": payload_bytes, "s": signature}``. Any peer holding the project's portal
  public key checks it offline with :func:`verify_credential`.
* **Signed HTTP bodies**: the agent sends a JSON body (with ``"ts"`` and ``"nonce"``) signed with its
  node key; headers :data:`NODE_HEADER` (public key hex) and :data:`SIGNATURE_HEADER` (signature hex).
  :func:`verify_body` checks size, signature and freshness; replay (a nonce seen before) is the portal's
  check because it needs storage.
* **Telemetry bodies**: :func:`validate_heartbeat`, :func:`validate_metrics`, :func:`validate_join`,
  :func:`validate_renew` turn a verified dict into a typed struct or raise :class:`PayloadError`.
* **Revocation list**: a DHT record under :func:`revocations_key` (subkey ``None``) whose value is
  :func:`revocation_list_value`, stored by a DHT node whose identity is the portal key.
* **Project config**: what ``GET /api/v1/projects/<slug>/config`` returns (:class:`ProjectConfig`).

Signatures are domain-separated (a credential or body signature can never be replayed as a DHT record or
message signature, nor the other way round): the signed bytes are a fixed prefix plus the payload.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import msgspec

from node_agent.identity import PUBLIC_KEY_BYTES, Identity, node_id_from_public_key, verify
from node_agent.wire import WireError, pack, unpack

__all__ = [
    "API_PREFIX",
    "MAX_BODY_BYTES",
    "MAX_CLOCK_SKEW",
    "MAX_METRICS_PER_BODY",
    "NODE_HEADER",
    "SIGNATURE_HEADER",
    "Credential",
    "CredentialError",
    "Heartbeat",
    "JoinRequest",
    "MetricPoint",
    "MetricsReport",
    "PayloadError",
    "PeerActivity",
    "ProjectConfig",
    "ProtocolError",
    "RenewRequest",
    "RevocationList",
    "SignedBodyError",
    "issue_credential",
    "json_loads_bounded",
    "parse_project_config",
    "parse_revocation_list",
    "revocation_list_value",
    "revocations_key",
    "sign_body",
    "sign_raw_body",
    "validate_heartbeat",
    "validate_join",
    "validate_metrics",
    "validate_renew",
    "verify_body",
    "verify_credential",
]

PROTOCOL_VERSION = 1
API_PREFIX = "/api/v1/"
NODE_HEADER = "X-Colearn-Node"
SIGNATURE_HEADER = "X-Colearn-Signature"
MAX_BODY_BYTES = 16 * 1024
MAX_CLOCK_SKEW = 60.0
MAX_METRICS_PER_BODY = 100
MAX_TOKEN_LENGTH = 1024
#: Deepest nesting a signed body may have (json recurses once per level: 8,000 `[` overflow the stack).
MAX_JSON_DEPTH = 16
#: Counters are stored in 64-bit signed database columns.
MAX_COUNTER = 2**63 - 1
#: Step and expert counts of a metrics point are stored in 32-bit columns.
MAX_SMALL_COUNT = 2**31 - 1
#: A credential issued this far in the future (portal clock ahead of ours) is still accepted.
CREDENTIAL_ISSUE_SKEW = 300.0
REVOCATIONS_NAMESPACE = "revocations:"
MAX_REVOKED = 512

_CREDENTIAL_DOMAIN = b"colearn-credential-v1\x00"
_BODY_DOMAIN = b"colearn-signed-body-v1\x00"


# ---- errors ---------------------------------------------------------------------------------------------


class ProtocolError(ValueError):
    """Bad input from the other side; ``reason`` is a short machine code, ``detail`` says what was wrong."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class CredentialError(ProtocolError):
    """Reasons: malformed, bad_signature, expired, wrong_project, wrong_node, revoked."""


class SignedBodyError(ProtocolError):
    """Reasons: ``malformed``, ``too_large``, ``bad_signature``, ``stale``."""


class PayloadError(ProtocolError):
    """A verified body (or config, or revocation list) that breaks its schema; reason ``invalid``."""

    def __init__(self, detail: str) -> None:
        super().__init__("invalid", detail)


# ---- credentials ----------------------------------------------------------------------------------------


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
    for name, value in (("iat", iat), ("exp", exp)):
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise CredentialError("malformed", f"{name} must be a finite unix time")
    return Credential(cid, project, user, node, float(iat), float(exp), token)  # type: ignore[arg-type]


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


# ---- signed HTTP bodies ---------------------------------------------------------------------------------


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_JSON_BRACKET = re.compile(r"[\[\]{}]")


def json_loads_bounded(raw: bytes | str, *, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """``json.loads`` that refuses nesting deeper than ``max_depth`` *before* parsing.

    The standard decoder recurses once per level, so a small body of nested brackets raises
    ``RecursionError``; this scan (strings removed, then brackets counted) is linear and raises
    ``ValueError`` instead. NaN and Infinity are refused too.
    """
    text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
    depth = 0
    for bracket in _JSON_BRACKET.finditer(_JSON_STRING.sub("", text)):
        depth += 1 if bracket.group() in "[{" else -1
        if depth > max_depth:
            raise ValueError(f"JSON nested deeper than {max_depth} levels")
    return json.loads(text, parse_constant=_reject_constant)


def sign_body(
    identity: Identity, body: Mapping[str, Any], now: float, nonce: str | None = None
) -> tuple[bytes, dict[str, str]]:
    """JSON-encode ``body`` plus ``ts``/``nonce`` and sign it with the node key; returns (raw, headers)."""
    full = dict(body)
    full["ts"] = float(now)
    full["nonce"] = nonce if nonce is not None else secrets.token_hex(16)
    raw = json.dumps(full, separators=(",", ":"), sort_keys=True, allow_nan=False).encode()
    return raw, sign_raw_body(identity, raw)


def sign_raw_body(identity: Identity, raw: bytes) -> dict[str, str]:
    """The headers that sign exactly ``raw`` (whatever it holds) with the node key."""
    return {
        "Content-Type": "application/json",
        NODE_HEADER: identity.public_key_bytes.hex(),
        SIGNATURE_HEADER: identity.sign(_BODY_DOMAIN + raw).hex(),
    }


def _header(headers: Mapping[str, str], name: str) -> str | None:
    """Case-insensitive header lookup (also accepts Django ``META`` names like ``HTTP_X_COLEARN_NODE``)."""
    wanted = name.lower()
    meta = "http_" + wanted.replace("-", "_")
    for key, value in headers.items():
        if isinstance(key, str) and key.lower() in (wanted, meta):
            return value if isinstance(value, str) else None
    return None


def verify_body(
    raw: bytes,
    headers: Mapping[str, str],
    *,
    now: float,
    max_skew: float = MAX_CLOCK_SKEW,
    max_bytes: int = MAX_BODY_BYTES,
) -> tuple[bytes, dict[str, Any]]:
    """Check a signed request; return (signer public key, body) or raise :class:`SignedBodyError`."""
    if len(raw) > max_bytes:
        raise SignedBodyError("too_large", f"{len(raw)} bytes exceeds the {max_bytes}-byte limit")
    key_hex, signature_hex = _header(headers, NODE_HEADER), _header(headers, SIGNATURE_HEADER)
    if not key_hex or not signature_hex:
        raise SignedBodyError("malformed", f"missing {NODE_HEADER} or {SIGNATURE_HEADER} header")
    try:
        public_key, signature = bytes.fromhex(key_hex), bytes.fromhex(signature_hex)
    except ValueError:
        raise SignedBodyError("malformed", "signature headers must be hex") from None
    if len(public_key) != PUBLIC_KEY_BYTES:
        raise SignedBodyError("malformed", f"{NODE_HEADER} must be a 32-byte key in hex")
    if not verify(public_key, _BODY_DOMAIN + raw, signature):
        raise SignedBodyError("bad_signature", "body is not signed by the key in the header")
    try:
        body = json_loads_bounded(raw)
    except ValueError as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise SignedBodyError("malformed", f"body is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise SignedBodyError("malformed", "body must be a JSON object")
    ts, nonce = body.get("ts"), body.get("nonce")
    if isinstance(ts, bool) or not isinstance(ts, int | float) or not _finite_float(ts):
        raise SignedBodyError("malformed", "body needs a ts that is a finite number")
    if not isinstance(nonce, str) or not 16 <= len(nonce) <= 64 or not _is_hex(nonce):
        raise SignedBodyError("malformed", "body needs a hex nonce of 16..64 characters")
    if abs(now - ts) > max_skew:
        raise SignedBodyError("stale", f"timestamp is {now - ts:+.0f}s off (limit {max_skew:.0f}s)")
    return public_key, body


def _finite_float(number: int | float) -> bool:
    try:
        return math.isfinite(float(number))
    except OverflowError:  # an integer beyond the float range (10**400)
        return False


def _is_hex(text: str) -> bool:
    return all(c in "0123456789abcdefABCDEF" for c in text)


# ---- telemetry and join bodies ----------------------------------------------------------------------------

_NodeIdHex = Annotated[str, msgspec.Meta(pattern="^[0-9a-f]{40}$")]
_Token = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_TOKEN_LENGTH)]
_Count = Annotated[int, msgspec.Meta(ge=0, le=MAX_COUNTER)]
_SmallCount = Annotated[int, msgspec.Meta(ge=0, le=MAX_SMALL_COUNT)]
_Rate = Annotated[float, msgspec.Meta(ge=0)]
# Text the portal stores: no control characters (PostgreSQL refuses NUL) and no lone surrogates.
_PRINTABLE = "[^\\x00-\\x1f\\x7f\\ud800-\\udfff]"
_ShortText = Annotated[str, msgspec.Meta(max_length=128, pattern=f"^{_PRINTABLE}*\\Z")]
_Version = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=f"^{_PRINTABLE}+\\Z")]
_Nonce = Annotated[str, msgspec.Meta(pattern="^[0-9a-fA-F]{16,64}$")]


class PeerActivity(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """A peer this node exchanged requests with recently (edges of the swarm graph)."""

    node_id: _NodeIdHex
    requests: _Count


class Heartbeat(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Body of ``POST /api/v1/agent/heartbeat``; counters are totals since the agent started."""

    credential: _Token
    node_id: _NodeIdHex
    endpoint: Annotated[str, msgspec.Meta(min_length=3, max_length=255, pattern=r"^[!-~]+:\d{1,5}\Z")]
    agent_version: _Version
    platform: _ShortText
    role: Literal["server", "trainer"]
    experts: Annotated[list[_ShortText], msgspec.Meta(max_length=1024)]
    requests: _Count
    samples: _Count
    failures: _Count
    bytes_in: _Count
    bytes_out: _Count
    samples_per_s: _Rate
    uptime_s: _Rate
    peers: Annotated[list[PeerActivity], msgspec.Meta(max_length=256)]
    ts: float
    nonce: _Nonce


class MetricPoint(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """One training metrics event (``node_agent.training.metrics.MetricsEvent`` as sent to the portal)."""

    step: _SmallCount
    loss: float
    accuracy: Annotated[float, msgspec.Meta(ge=0, le=1)]
    samples_per_s: _Rate
    experts_answered: _SmallCount
    experts_failed: _SmallCount
    timestamp: float
    kind: Literal["train", "eval"] = "train"


class MetricsReport(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Body of ``POST /api/v1/agent/metrics``."""

    credential: _Token
    node_id: _NodeIdHex
    metrics: Annotated[list[MetricPoint], msgspec.Meta(min_length=1, max_length=MAX_METRICS_PER_BODY)]
    ts: float
    nonce: _Nonce


class JoinRequest(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Body of ``POST /api/v1/agent/join``: a one-time code traded for a credential."""

    code: Annotated[str, msgspec.Meta(min_length=4, max_length=64)]
    agent_version: _Version
    platform: _ShortText
    ts: float
    nonce: _Nonce


class RenewRequest(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Body of ``POST /api/v1/agent/renew``."""

    credential: _Token
    ts: float
    nonce: _Nonce


def _convert(body: object, schema: type[Any], what: str) -> Any:
    if not isinstance(body, Mapping):
        raise PayloadError(f"{what} must be a JSON object")
    try:
        value = msgspec.convert(body, schema, strict=True)
    except msgspec.ValidationError as exc:
        raise PayloadError(f"{what}: {exc}") from None
    except UnicodeEncodeError:  # a lone surrogate ("\ud800" in the JSON) where a Literal is expected
        raise PayloadError(f"{what}: text must be valid Unicode") from None
    for name in ("loss", "samples_per_s", "uptime_s", "ts", "timestamp"):
        number = getattr(value, name, 0.0)
        if isinstance(number, float) and not math.isfinite(number):
            raise PayloadError(f"{what}: {name} must be finite")
    return value


def validate_heartbeat(body: object) -> Heartbeat:
    return _convert(body, Heartbeat, "heartbeat")


def validate_metrics(body: object) -> MetricsReport:
    report: MetricsReport = _convert(body, MetricsReport, "metrics")
    for point in report.metrics:
        if not all(math.isfinite(x) for x in (point.loss, point.samples_per_s, point.timestamp)):
            raise PayloadError(f"metrics: step {point.step} has a non-finite number")
    return report


def validate_join(body: object) -> JoinRequest:
    return _convert(body, JoinRequest, "join request")


def validate_renew(body: object) -> RenewRequest:
    return _convert(body, RenewRequest, "renew request")


# ---- revocation list ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RevocationList:
    revoked: frozenset[str]
    published_at: float


def revocations_key(project: str) -> str:
    """DHT key of a project's revocation list (plain value, subkey ``None``)."""
    return f"{REVOCATIONS_NAMESPACE}{project}"


def revocation_list_value(revoked: Iterable[str], now: float) -> dict[str, Any]:
    """The DHT value the portal stores (with its own identity) under :func:`revocations_key`."""
    cids = sorted({str(cid) for cid in revoked})
    if len(cids) > MAX_REVOKED:
        raise ValueError(f"at most {MAX_REVOKED} revoked credentials fit in one DHT record")
    return {"v": PROTOCOL_VERSION, "revoked": cids, "t": float(now)}


def parse_revocation_list(value: object) -> RevocationList:
    if not isinstance(value, dict) or value.get("v") != PROTOCOL_VERSION:
        raise PayloadError("revocation list must be a map with v=1")
    revoked, t = value.get("revoked"), value.get("t")
    if not isinstance(revoked, list) or len(revoked) > MAX_REVOKED:
        raise PayloadError(f"revoked must be a list of at most {MAX_REVOKED} credential ids")
    if not all(isinstance(cid, str) and 0 < len(cid) <= 64 for cid in revoked):
        raise PayloadError("revoked credential ids must be short strings")
    if isinstance(t, bool) or not isinstance(t, int | float) or not math.isfinite(t):
        raise PayloadError("revocation list t must be a unix time")
    return RevocationList(frozenset(revoked), float(t))


# ---- project config -------------------------------------------------------------------------------------


class ExpertSpec(msgspec.Struct, frozen=True):
    hidden_dim: Annotated[int, msgspec.Meta(ge=1, le=65536)]
    grid: Annotated[
        list[Annotated[int, msgspec.Meta(ge=1, le=4096)]], msgspec.Meta(min_length=1, max_length=8)
    ]
    prefix: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z][A-Za-z0-9_\-]{0,63}$")]
    expert_class: str = msgspec.field(name="class", default="ffn")


class TrainingSpec(msgspec.Struct, frozen=True):
    dataset: str = "digits"
    optimizer: str = "adam"
    learning_rate: float = 1e-3


class AgentSpec(msgspec.Struct, frozen=True):
    version: str = ""
    wheel_url: str = ""
    sha256: str = ""


class ProjectConfig(msgspec.Struct, frozen=True):
    """``GET /api/v1/projects/<slug>/config``; unknown extra fields are ignored (the portal may add more)."""

    project: str
    portal_public_key: Annotated[str, msgspec.Meta(pattern="^[0-9a-f]{64}$")]
    expert: ExpertSpec
    title: str = ""
    status: str = "active"
    dht_prefix: str = ""
    bootstrap_peers: list[str] = msgspec.field(default_factory=list)
    gated: bool = False
    training: TrainingSpec = msgspec.field(default_factory=TrainingSpec)
    agent: AgentSpec = msgspec.field(default_factory=AgentSpec)

    @property
    def portal_key(self) -> bytes:
        return bytes.fromhex(self.portal_public_key)


def parse_project_config(data: object) -> ProjectConfig:
    return _convert(data, ProjectConfig, "project config")


def project_config_to_dict(config: ProjectConfig) -> dict[str, Any]:
    return msgspec.to_builtins(config)

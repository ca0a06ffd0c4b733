"""The agent API's bodies and replies: one msgspec struct per wire format, used by both sides.

The agent builds the ``*Body`` structs (what it has to say); :func:`node_agent.portal.signed_body.sign_body`
adds ``ts`` and ``nonce``. The request structs (:class:`Heartbeat`, :class:`MetricsReport`,
:class:`JoinRequest`, :class:`RenewRequest`) are those bodies plus the two stamped fields: the portal
decodes with them (``validate_*``), and its OpenAPI components are generated from them and from the reply
structs, limits included. Pure: no sockets, clocks, torch or Django.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

import msgspec

from node_agent.portal.errors import PayloadError, convert
from node_agent.portal.ice import TurnGrant
from node_agent.portal.project_config import ProjectConfig
from node_agent.portal.tokens import MAX_TOKEN_LENGTH

__all__ = [
    "API_PREFIX",
    "EXPORT_HEADER",
    "EXPORT_SHA256_HEADER",
    "MAX_COUNTER",
    "MAX_METRICS_PER_BODY",
    "MAX_SMALL_COUNT",
    "ErrorReply",
    "ExportFetch",
    "ExportFetchBody",
    "ExportUpload",
    "ExportUploadBody",
    "Heartbeat",
    "HeartbeatBody",
    "HeartbeatReply",
    "JoinBody",
    "JoinReply",
    "JoinRequest",
    "JoinedNode",
    "MetricPoint",
    "MetricsBody",
    "MetricsReply",
    "MetricsReport",
    "PeerActivity",
    "PendingReply",
    "RenewBody",
    "RenewReply",
    "RenewRequest",
    "ReplicaState",
    "validate_export_fetch",
    "validate_export_upload",
    "validate_heartbeat",
    "validate_join",
    "validate_metrics",
    "validate_renew",
]

API_PREFIX = "/api/v1/"
MAX_METRICS_PER_BODY = 100
#: Counters are stored in 64-bit signed database columns.
MAX_COUNTER = 2**63 - 1
#: Step and expert counts of a metrics point are stored in 32-bit columns.
MAX_SMALL_COUNT = 2**31 - 1

_NodeIdHex = Annotated[str, msgspec.Meta(pattern="^[0-9a-f]{40}$")]
_Token = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_TOKEN_LENGTH)]
_Count = Annotated[int, msgspec.Meta(ge=0, le=MAX_COUNTER)]
_SmallCount = Annotated[int, msgspec.Meta(ge=0, le=MAX_SMALL_COUNT)]
_Rate = Annotated[float, msgspec.Meta(ge=0)]
# Text the portal stores: no control characters (PostgreSQL refuses NUL) and no lone surrogates.
_PRINTABLE = "[^\\x00-\\x1f\\x7f\\ud800-\\udfff]"
_ShortText = Annotated[str, msgspec.Meta(max_length=128, pattern=f"^{_PRINTABLE}*\\Z")]
_Version = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=f"^{_PRINTABLE}+\\Z")]
_Timestamp = Annotated[float, msgspec.Meta(description="unix time; refused when 60 s off the portal clock")]
_Nonce = Annotated[str, msgspec.Meta(pattern="^[0-9a-fA-F]{16,64}$", description="never reused")]


class _Wire(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Every body the portal accepts refuses unknown fields.

    msgspec passes ``frozen`` on to subclasses by itself; they repeat it for the type checker, which follows
    the dataclass rule that a subclass of a frozen class says so.
    """


# ---- bodies: what the agent writes -------------------------------------------------------------------------


class PeerActivity(_Wire, frozen=True):
    """A peer this node exchanged requests with recently (edges of the swarm graph)."""

    node_id: _NodeIdHex
    requests: _Count


#: Expert states one heartbeat reports (the body must stay under the portal's 16 KiB).
MAX_REPLICA_STATES = 128
#: Work receipts one heartbeat carries (`node_agent.credit.receipts`; base64url, the rest wait for the next).
MAX_RECEIPTS_PER_HEARTBEAT = 64
_ReceiptText = Annotated[
    str,
    msgspec.Meta(
        min_length=1, max_length=1400, pattern="^[A-Za-z0-9_-]+\\Z", description="a signed work receipt"
    ),
]


class ReplicaState(_Wire, frozen=True):
    """One hosted expert's training state: its optimiser step and how long ago it last averaged with
    another replica (None: never; `node_agent.moe.server.replicas`)."""

    uid: _ShortText
    step: _Count
    averaged_age_s: _Rate | None = None


#: Header of `POST /api/v1/agent/export`: the signed `ExportUploadBody` (JSON) describing the raw body.
EXPORT_HEADER = "X-Colearn-Export"


class ExportUploadBody(_Wire, frozen=True):
    """What an export upload claims about its body (a `node-agent export` safetensors file); signed."""

    credential: _Token
    node_id: _NodeIdHex
    sha256: Annotated[str, msgspec.Meta(pattern="^[0-9a-f]{64}$")]
    size: Annotated[int, msgspec.Meta(ge=1, le=2**40)]


#: Header of the reply to `POST /api/v1/agent/export/latest`: the sha256 (hex) of the file in the body.
EXPORT_SHA256_HEADER = "X-Colearn-Sha256"


class ExportFetchBody(_Wire, frozen=True):
    """A member node asks for its project's latest export (to start a cell no live replica holds)."""

    credential: _Token
    node_id: _NodeIdHex
    project: Annotated[str, msgspec.Meta(min_length=1, max_length=100, pattern="^[-a-zA-Z0-9_]+\\Z")]


class HeartbeatBody(_Wire, frozen=True):
    """A heartbeat as the agent builds it; counters are totals since the agent started."""

    credential: _Token
    node_id: _NodeIdHex
    endpoint: Annotated[
        str,
        msgspec.Meta(
            min_length=3, max_length=255, pattern=r"^[!-~]+:\d{1,5}\Z", description="DHT address, host:port"
        ),
    ]
    agent_version: _Version
    platform: _ShortText
    role: Literal["server", "trainer"]
    experts: Annotated[list[_ShortText], msgspec.Meta(max_length=1024, description="uids served")]
    requests: _Count
    samples: _Count
    failures: _Count
    bytes_in: _Count
    bytes_out: _Count
    samples_per_s: _Rate
    uptime_s: _Rate
    peers: Annotated[list[PeerActivity], msgspec.Meta(max_length=256)]
    going_offline: Annotated[
        bool, msgspec.Meta(description="the last heartbeat of a clean stop: mark the node offline now")
    ] = False
    replica_states: Annotated[list[ReplicaState], msgspec.Meta(max_length=MAX_REPLICA_STATES)] = (
        msgspec.field(default_factory=list)
    )
    averaging_rounds_completed: _Count = 0
    averaging_rounds_failed: _Count = 0
    receipts: Annotated[list[_ReceiptText], msgspec.Meta(max_length=MAX_RECEIPTS_PER_HEARTBEAT)] = (
        msgspec.field(default_factory=list)
    )


class MetricPoint(_Wire, frozen=True):
    """One training metrics event (``node_agent.training.metrics.MetricsEvent`` as sent to the portal)."""

    step: _SmallCount
    loss: float
    accuracy: Annotated[float, msgspec.Meta(ge=0, le=1)]
    samples_per_s: _Rate
    experts_answered: _SmallCount
    experts_failed: _SmallCount
    timestamp: float
    kind: Literal["train", "eval"] = "train"
    #: A language model's bits per byte (validation bits per byte on `eval` points); None for classifiers.
    bits_per_byte: Annotated[float, msgspec.Meta(ge=0, le=64)] | None = None
    run: Annotated[
        str,
        msgspec.Meta(
            max_length=32,
            pattern="^[0-9A-Za-z_-]*\\Z",
            description="the trainer run (one per trainer start; steps count up within a run); '' if unknown",
        ),
    ] = ""


class MetricsBody(_Wire, frozen=True):
    credential: _Token
    node_id: _NodeIdHex
    metrics: Annotated[list[MetricPoint], msgspec.Meta(min_length=1, max_length=MAX_METRICS_PER_BODY)]


class JoinBody(_Wire, frozen=True):
    """A one-time code traded for a credential."""

    code: Annotated[str, msgspec.Meta(min_length=4, max_length=64)]
    agent_version: _Version
    platform: _ShortText


class RenewBody(_Wire, frozen=True):
    credential: _Token


# ---- requests: the bodies as signed (ts and nonce added), what the portal decodes -------------------------


class Heartbeat(HeartbeatBody, frozen=True, kw_only=True):
    """Body of ``POST /api/v1/agent/heartbeat`` (keyword-only: ``ts``, ``nonce`` follow defaults)."""

    ts: _Timestamp
    nonce: _Nonce


class ExportUpload(ExportUploadBody, frozen=True, kw_only=True):
    """The signed ``X-Colearn-Export`` header of ``POST /api/v1/agent/export``."""

    ts: _Timestamp
    nonce: _Nonce


class ExportFetch(ExportFetchBody, frozen=True, kw_only=True):
    """Body of ``POST /api/v1/agent/export/latest``."""

    ts: _Timestamp
    nonce: _Nonce


class MetricsReport(MetricsBody, frozen=True):
    """Body of ``POST /api/v1/agent/metrics``."""

    ts: _Timestamp
    nonce: _Nonce


class JoinRequest(JoinBody, frozen=True):
    """Body of ``POST /api/v1/agent/join``."""

    ts: _Timestamp
    nonce: _Nonce


class RenewRequest(RenewBody, frozen=True):
    """Body of ``POST /api/v1/agent/renew``."""

    ts: _Timestamp
    nonce: _Nonce


def validate_heartbeat(body: object) -> Heartbeat:
    return convert(body, Heartbeat, "heartbeat")


def validate_export_upload(body: object) -> ExportUpload:
    return convert(body, ExportUpload, "export upload")


def validate_export_fetch(body: object) -> ExportFetch:
    return convert(body, ExportFetch, "export fetch")


def validate_metrics(body: object) -> MetricsReport:
    report = convert(body, MetricsReport, "metrics")
    for point in report.metrics:
        if not all(math.isfinite(x) for x in (point.loss, point.samples_per_s, point.timestamp)):
            raise PayloadError(f"metrics: step {point.step} has a non-finite number")
    return report


def validate_join(body: object) -> JoinRequest:
    return convert(body, JoinRequest, "join request")


def validate_renew(body: object) -> RenewRequest:
    return convert(body, RenewRequest, "renew request")


# ---- replies: what the portal answers ----------------------------------------------------------------------


class _Reply(msgspec.Struct, frozen=True):
    """Replies ignore unknown fields when decoded: a newer portal may add some."""


class ErrorReply(_Reply, frozen=True):
    """Every 4xx/5xx of the API (429 and some 503 carry a ``Retry-After`` header)."""

    error: Annotated[str, msgspec.Meta(description="machine code, e.g. code_expired, replayed, rate_limited")]
    detail: Annotated[str, msgspec.Meta(description="what was wrong, for humans")]


class JoinedNode(_Reply, frozen=True):
    node_id: _NodeIdHex
    state: str
    project: str


class JoinReply(_Reply, frozen=True):
    """201 of a join: the credential, the node as the portal registered it and the project config."""

    credential: str
    expires_at: float
    node: JoinedNode
    config: ProjectConfig
    #: A short-lived TURN credential when the operator runs TURN (`node_agent.portal.ice`).
    turn: TurnGrant | None = None


class PendingReply(_Reply, frozen=True):
    """202 of a join while an approval-gated project's owner has not approved the node."""

    status: Literal["pending_approval"]
    detail: str = ""


class RenewReply(_Reply, frozen=True):
    credential: str
    expires_at: float
    turn: TurnGrant | None = None


class HeartbeatReply(_Reply, frozen=True):
    status: Literal["ok"]
    state: str
    next_heartbeat_s: Annotated[float, msgspec.Meta(description="send the next heartbeat this much later")]


class MetricsReply(_Reply, frozen=True):
    status: Literal["ok"]
    stored: Annotated[int, msgspec.Meta(ge=0, description="points stored (duplicates are skipped)")]


def reply_to_builtins(reply: msgspec.Struct) -> dict[str, Any]:
    """A reply struct as the JSON object the portal sends."""
    data: dict[str, Any] = msgspec.to_builtins(reply)
    return data

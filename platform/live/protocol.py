"""Wire protocol of the live swarm channel (`/ws/live/projects/<slug>/`), as TypedDicts. Pure: no I/O.

Server to browser, every message is a JSON object with `type` and `seq`; `seq` counts up by one per
message on this socket, starting at 1. A browser that sees a gap (a `seq` that is not the previous plus
one) sends `{"type": "resync"}` and gets a fresh `swarm.snapshot` (its `seq` continues the count).

* `swarm.snapshot`: everything the page shows (project, viewer, nodes, edges, coverage, replicas,
  throughput and training series, alerts, and the freshness limits the portal uses for node states).
* diffs, each idempotent (applying one twice changes nothing more):
  `node.upsert` (full node view), `node.remove`, `edges.changed` (all edges out of one node),
  `coverage.changed` (replicas per grid cell), `replicas.changed` (the replicas and averaging panel:
  the stalest cells' newest step and averaging time, at most `MAX_REPLICA_CELLS` of them, and the online
  nodes' averaging rounds), `metrics.appended` (points of one series), `alert.raised`, `alert.cleared`.
* `swarm.batch`: several diffs flushed together by the coalescer; this is what caps a viewer at a few
  messages a second however large the swarm. A flush holding a single diff sends that diff on its own
  (with `seq`, `server_time` and `since` added, as a batch has).

Every diff carries `at`, the unix time the change it reports happened on the portal (heartbeat ingest,
observer, admin action); browsers and `benchmarks/bench_live.py` read delivery latency from it.
Browser to server: only `{"type": "resync"}`; anything else is logged and ignored.
"""

from __future__ import annotations

import functools
import json
import logging
from typing import Any, Literal, NotRequired, TypedDict

from node_agent.portal.signed_body import json_loads_bounded
from swarm.summaries import AlertSummary, CoverageReading, NodeSummary, ReplicaSummary, TrainingPoint

logger = logging.getLogger(__name__)

MAX_CLIENT_MESSAGE_BYTES = 1024


class NodeView(NodeSummary):
    """A node on the page: its one summary (swarm.summaries) plus what only the browser needs."""

    label: str
    owner: str  # display name of the volunteer
    owner_key: str  # opaque per-owner token; the viewer's own nodes match `viewer.owner_key`


class PeerEdge(TypedDict):
    node_id: str
    requests: int


class EdgeSet(TypedDict):
    source: str
    targets: list[PeerEdge]


class SwarmPoint(TypedDict):
    t: float
    samples_per_s: float
    online: int


# Coverage, replicas, training points and alerts travel in their one summary shape (swarm.summaries).
CoverageView = CoverageReading
ReplicasView = ReplicaSummary
AlertView = AlertSummary


class ProjectInfo(TypedDict):
    slug: str
    title: str
    status: str
    grid: list[int]
    expert_prefix: str


class Limits(TypedDict):
    online_within: int  # seconds: a heartbeat older than this makes a node stale in the browser
    offline_after: int


class ViewerInfo(TypedDict):
    owner_key: str | None
    staff: bool


class NodeUpsert(TypedDict):
    type: Literal["node.upsert"]
    at: float
    node: NodeView


class NodeRemove(TypedDict):
    type: Literal["node.remove"]
    at: float
    node_id: str


class EdgesChanged(TypedDict):
    type: Literal["edges.changed"]
    at: float
    source: str
    targets: list[PeerEdge]


class CoverageChanged(TypedDict):
    type: Literal["coverage.changed"]
    at: float
    coverage: CoverageView


class ReplicasChanged(TypedDict):
    type: Literal["replicas.changed"]
    at: float
    replicas: ReplicasView


class MetricsAppended(TypedDict):
    type: Literal["metrics.appended"]
    at: float
    series: Literal["swarm", "training"]
    points: list[Any]  # SwarmPoint or TrainingPoint, by series


class AlertRaised(TypedDict):
    type: Literal["alert.raised"]
    at: float
    alert: AlertView


class AlertCleared(TypedDict):
    type: Literal["alert.cleared"]
    at: float
    alert_id: str


Diff = (
    NodeUpsert
    | NodeRemove
    | EdgesChanged
    | CoverageChanged
    | ReplicasChanged
    | MetricsAppended
    | AlertRaised
    | AlertCleared
)
DIFF_TYPES = frozenset(
    {
        "node.upsert",
        "node.remove",
        "edges.changed",
        "coverage.changed",
        "replicas.changed",
        "metrics.appended",
        "alert.raised",
        "alert.cleared",
    }
)


class SwarmSnapshot(TypedDict):
    type: Literal["swarm.snapshot"]
    seq: int
    server_time: float
    project: ProjectInfo
    viewer: ViewerInfo
    nodes: list[NodeView]
    edges: list[EdgeSet]
    coverage: CoverageView
    replicas: ReplicasView
    throughput: list[SwarmPoint]
    training: list[TrainingPoint]
    alerts: list[AlertView]
    limits: Limits


class SwarmBatch(TypedDict):
    type: Literal["swarm.batch"]
    seq: int
    server_time: float
    since: float  # `at` of the oldest change folded into this batch
    diffs: list[Diff]


class ResyncRequest(TypedDict):
    type: Literal["resync"]
    reason: NotRequired[str]


class ClientMessageError(ValueError):
    """A browser message we do not understand; the socket stays open and the message is ignored."""


def parse_client_message(text: str | None) -> ResyncRequest:
    """Validate a browser frame; only `resync` exists. Raises ClientMessageError with the reason."""
    if text is None:
        raise ClientMessageError("binary frames are not part of the protocol")
    if len(text) > MAX_CLIENT_MESSAGE_BYTES:
        raise ClientMessageError(f"message longer than {MAX_CLIENT_MESSAGE_BYTES} bytes")
    try:
        message = json_loads_bounded(text, max_depth=4)  # json.loads overflows the stack on 1,000 `[`
    except ValueError:
        raise ClientMessageError("not JSON (or nested too deeply)") from None
    if not isinstance(message, dict) or message.get("type") != "resync":
        raise ClientMessageError("only {'type': 'resync'} is accepted")
    return {"type": "resync"}


def encode_with_seq(prefix_type: str, seq: int, body_json: str) -> str:
    """Splice `type` and `seq` into an already encoded JSON object body.

    A batch is encoded once per flush and sent to every viewer of the project; only `seq` differs, so
    this avoids encoding the same diffs hundreds of times. `body_json` must be a JSON object.
    """
    if not body_json.startswith("{"):
        raise ValueError("body must be an encoded JSON object")
    head = f'{{"type":{_quoted(prefix_type)},"seq":{int(seq)}'
    # Runs once per viewer per flush: look at the (possibly large) body only where it may be empty.
    empty = len(body_json) < 16 and body_json.strip() == "{}"
    return head + ("}" if empty else "," + body_json[1:])


@functools.lru_cache(maxsize=64)
def _quoted(text: str) -> str:
    return json.dumps(text)


def encode_flush(diffs: list[Diff], *, since: float, server_time: float) -> tuple[str, str]:
    """(message type, body JSON without type/seq) for one coalescer flush: a lone diff or a batch."""
    if len(diffs) == 1:
        diff: dict[str, Any] = dict(diffs[0])
        kind = diff.pop("type")
        diff["server_time"] = server_time
        diff["since"] = since
        return kind, dumps(diff)
    return "swarm.batch", dumps({"server_time": server_time, "since": since, "diffs": diffs})


def dumps(value: Any) -> str:
    """Compact JSON without NaN/Infinity (browsers' JSON.parse rejects them)."""
    return json.dumps(value, separators=(",", ":"), allow_nan=False)

"""The shapes of the read-only swarm answers (`/api/v1/projects/<slug>/swarm` and `/nodes`).

The selectors build these and the OpenAPI components are generated from them (`swarm.openapi`), so the
documented answer is the one served. Times are ISO 8601 strings; ages are seconds.
"""

from __future__ import annotations

from typing import NotRequired, TypedDict


class Page(TypedDict):
    offset: int
    limit: int
    count: int
    more: bool


class NodeRow(TypedDict):
    """A node; `endpoint` (the volunteer's IP address) and `platform` only for its volunteer and staff."""

    node_id: str
    state: str
    state_changed_at: str | None
    state_reason: str
    role: str
    agent_version: str
    experts: list[str]
    announced_experts: list[str]
    requests: int
    samples: int
    failures: int
    bytes_in: int
    bytes_out: int
    samples_per_s: float
    last_heartbeat_at: str | None
    heartbeat_age_s: float | None
    last_seen_in_dht_at: str | None
    #: The observer's last `info` probe: "" (not probed), "unreachable" (announced, no connection opened),
    #: "reachable" (connected, but its experts did not answer properly) or "serving".
    reach: str
    probed_at: str | None
    probe_reason: str
    serving_experts: list[str]
    endpoint: NotRequired[str]
    platform: NotRequired[str]


class NodeReach(TypedDict):
    """Nodes announced in the DHT, of those the ones the observer could connect to, and those serving."""

    announced: int
    reachable: int
    serving: int


class NodesPage(TypedDict):
    nodes: list[NodeRow]
    nodes_page: Page
    node_states: dict[str, int]
    node_reach: NodeReach


class NodesReply(NodesPage):
    """`GET /api/v1/projects/<slug>/nodes`."""

    project: str
    generated_at: str


class CoverageSummary(TypedDict):
    """Counts, one page of covered cells (uid -> serving replicas) and one page of holes (uids).

    A cell is covered only when a node the observer saw serving (an `info` probe answered) hosts it;
    `announced` counts the cells some node announces, serving or not."""

    total: int
    covered: int
    announced: int
    holes: int
    cells: dict[str, int]
    cells_page: Page
    hole_uids: list[str]
    holes_page: Page


class RecentMetric(TypedDict):
    run: str
    step: int
    loss: float
    accuracy: float
    bits_per_byte: float | None  # a language model's training bits per byte; None for classifiers
    samples_per_s: float
    timestamp: str


class SwarmState(NodesPage):
    """`GET /api/v1/projects/<slug>/swarm`."""

    project: str
    generated_at: str
    observed_at: str | None
    observation_age_s: float | None
    observation_error: str
    coverage: CoverageSummary
    metrics: list[RecentMetric]
    metrics_age_s: float | None

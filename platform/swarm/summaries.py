"""The one shape of each swarm object that travels the live path, and its one decoder. Pure: no I/O.

A node, an alert, a coverage reading, a training point and the replica state of a node (and of the
swarm) are summarised once from their rows
(`swarm.events`), in these shapes with times as unix seconds; the same dicts ride in the channel-layer
events (`core.events`), in the live diffs and snapshots (`live.protocol` adds only the browser's labels
and owner fields) and under the read-only API's node rows (`swarm.selectors.node_as_dict`, which keeps
its documented ISO 8601 times). Whatever arrives from the channel layer is checked with `decode` before
it is used: the bounds below cap what one event can cost, and a value outside them is refused with
SummaryError, never coerced.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, NotRequired, TypedDict, TypeVar

import msgspec

MAX_UNIX_TIME = 4_102_444_800.0  # 2100-01-01
MAX_UIDS = 4096  # experts a node claims or announces (heartbeats carry at most 1,024)
MAX_CELLS = 1 << 20  # grid cells in one coverage reading (projects are capped far lower)
MAX_NODE_REPLICAS = 128  # experts' states one node reports (node_agent.portal.schemas.MAX_REPLICA_STATES)
MAX_REPLICA_CELLS = 256  # cells listed in one replica summary, the stalest first: all of a 16x16 grid

_Id = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
_Text = Annotated[str, msgspec.Meta(max_length=128)]
_Message = Annotated[str, msgspec.Meta(max_length=1000)]
_Uids = Annotated[list[_Text], msgspec.Meta(max_length=MAX_UIDS)]
_Count = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]
_Replicas = Annotated[int, msgspec.Meta(ge=0, le=2**31 - 1)]
_Rate = Annotated[float, msgspec.Meta(ge=0.0, le=1e15)]  # the comparison also refuses NaN
_Time = Annotated[float, msgspec.Meta(ge=0.0, le=MAX_UNIX_TIME)]
_Finite = Annotated[float, msgspec.Meta(ge=-1e300, le=1e300)]


class SummaryError(ValueError):
    """A summary that does not have the promised shape or breaks a bound."""


class NodeSummary(TypedDict):
    """A node as every live consumer sees it (the browser's node view adds label and owner)."""

    node_id: _Id
    role: _Text  # "server" | "trainer" | "" before the first heartbeat
    state: _Text  # swarm.models.NodeState value
    state_label: _Text
    state_changed: _Time
    last_heartbeat: _Time | None
    experts: _Uids  # what the node says it serves
    announced: _Uids  # what the observer saw it announce in the DHT
    reach: _Text  # the observer's last probe (swarm.models.ProbeState): "", unreachable, reachable, serving
    probed_at: _Time | None
    probe_reason: Annotated[str, msgspec.Meta(max_length=200)]  # why it is not serving, "" if it is
    serving: _Uids  # the announced experts that answered the probe's `info` call
    agent_version: _Text
    samples: _Count
    requests: _Count
    samples_per_s: _Rate


class AlertSummary(TypedDict):
    id: _Id
    kind: _Text
    severity: _Text
    message: _Message
    node_id: _Id | None
    raised_at: _Time


class CoverageReading(TypedDict):
    """Live replicas per covered grid cell (holes are absent or 0) and when the DHT was read."""

    cells: Annotated[dict[_Text, _Replicas], msgspec.Meta(max_length=MAX_CELLS)]
    observed_at: _Time | None


class ExpertState(TypedDict):
    """One expert's training state: its optimiser step and when (unix time) it last averaged with another
    replica, None if never. For a cell of the swarm: the newest step and newest averaging of its replicas.

    A time rather than an age, so that a browser can let the age tick between updates."""

    uid: _Text
    step: _Count
    averaged_at: _Time | None


class ReplicaReport(TypedDict):
    """What one online node last reported of its experts' replicas and of its averaging rounds."""

    states: Annotated[list[ExpertState], msgspec.Meta(max_length=MAX_NODE_REPLICAS)]
    rounds_completed: _Count  # since the node started
    rounds_failed: _Count


class ReplicaSummary(TypedDict):
    """The swarm's replicas and averaging (swarm.replicas.fold_reports): the `MAX_REPLICA_CELLS` stalest
    cells any online node reported, how many cells were reported, and the online nodes' rounds. How many
    live replicas each cell has comes from the coverage reading (CoverageReading), not from here."""

    cells: Annotated[list[ExpertState], msgspec.Meta(max_length=MAX_REPLICA_CELLS)]
    cells_count: _Count
    rounds_completed: _Count
    rounds_failed: _Count


class TrainingPoint(TypedDict):
    """A trainer's loss and accuracy at a step of one run (the charts draw each run as its own series);
    `kind` "eval" for a validation point, `bits_per_byte` a language model's (None for classifiers)."""

    t: _Time
    step: _Count
    loss: _Finite
    accuracy: _Finite
    # Absent from the events of portals before language models (a rolling restart): "train", None.
    kind: NotRequired[Literal["train", "eval"]]
    bits_per_byte: NotRequired[Annotated[float, msgspec.Meta(ge=0, le=64)] | None]
    node_id: _Text
    run: Annotated[str, msgspec.Meta(max_length=32)]  # '' from agents that send no run id


Summary = TypeVar("Summary")


def decode(value: Any, shape: type[Summary]) -> Summary:
    """`value` checked against `shape` (types and bounds, no coercion); SummaryError says what broke."""
    try:
        return msgspec.convert(value, shape, strict=True)
    except msgspec.ValidationError as exc:
        raise SummaryError(f"bad {shape.__name__}: {exc}") from None


def finite_or(value: float, default: float) -> float:
    """A stored float fit for a summary: NaN and infinities (JSON cannot carry them) become `default`."""
    return value if math.isfinite(value) else default


def iso_from_unix(seconds: float | None) -> str | None:
    """A summary time as the API writes it (ISO 8601, UTC); exact to the microsecond it was stored with."""
    return None if seconds is None else datetime.fromtimestamp(seconds, UTC).isoformat()

"""The project config: what ``GET /api/v1/projects/<slug>/config`` returns and the agent saves.

Unknown extra fields are ignored (the portal may add more). Pure: no sockets, clocks, torch or Django.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from node_agent.portal.errors import convert
from node_agent.portal.ice import IceServerSpec

__all__ = [
    "AgentSpec",
    "ExpertSpec",
    "LMSpec",
    "ProjectConfig",
    "TrainingSpec",
    "parse_project_config",
    "project_config_to_dict",
]


_SEGMENT = r"[A-Za-z][A-Za-z0-9_\-]{0,63}"
_GRID_NAME = rf"^{_SEGMENT}(\.{_SEGMENT}){{0,3}}$"


class ExpertSpec(msgspec.Struct, frozen=True):
    hidden_dim: Annotated[int, msgspec.Meta(ge=1, le=65536)]
    grid: Annotated[
        list[Annotated[int, msgspec.Meta(ge=1, le=4096)]], msgspec.Meta(min_length=1, max_length=8)
    ]
    #: The grid's name: `ffn`, or dotted segments such as `lm.b0` (one grid per language-model block).
    prefix: Annotated[
        str,
        msgspec.Meta(max_length=64, pattern=_GRID_NAME),
    ]
    expert_class: str = msgspec.field(name="class", default="ffn")


class TrainingSpec(msgspec.Struct, frozen=True):
    dataset: str = "digits"
    optimizer: str = "adam"
    learning_rate: float = 1e-3


class LMSpec(msgspec.Struct, frozen=True):
    """The language model's shape (task ``lm``): one expert grid per block, in ``ProjectConfig.grids``."""

    blocks: Annotated[int, msgspec.Meta(ge=1, le=64)]
    seq_len: Annotated[int, msgspec.Meta(ge=8, le=4096)] = 128
    window: Annotated[int, msgspec.Meta(ge=1, le=4096)] = 64
    heads: Annotated[int, msgspec.Meta(ge=1, le=64)] = 4
    #: `python-stdlib`: the built-in corpus; `own`: the researcher's text (`--text`, kept on their machine).
    corpus: Literal["python-stdlib", "own"] = "python-stdlib"


class AgentSpec(msgspec.Struct, frozen=True):
    version: str = ""
    wheel_url: str = ""
    sha256: str = ""


class ProjectConfig(msgspec.Struct, frozen=True):
    """DHT prefix, bootstrap peers (``host:port/id``), expert grid, hyperparameters, portal key, wheel."""

    project: str
    portal_public_key: Annotated[
        str, msgspec.Meta(pattern="^[0-9a-f]{64}$", description="the portal's Ed25519 public key, hex")
    ]
    expert: ExpertSpec
    title: str = ""
    status: str = "active"
    dht_prefix: str = ""
    bootstrap_peers: list[str] = msgspec.field(default_factory=list)
    gated: bool = False
    approval_required: bool = False
    training: TrainingSpec = msgspec.field(default_factory=TrainingSpec)
    agent: AgentSpec = msgspec.field(default_factory=AgentSpec)
    #: STUN/TURN servers the operator runs (URLs only; TURN credentials come with join and renew replies).
    ice_servers: Annotated[list[IceServerSpec], msgspec.Meta(max_length=8)] = msgspec.field(
        default_factory=list
    )
    #: `classification` (the tabular datasets) or `lm` (the byte-level Transformer language model).
    task: Literal["classification", "lm"] = "classification"
    lm: LMSpec | None = None
    #: Every grid volunteers host (an LM has one per block, `lm.b0`, `lm.b1`, ...); empty means `[expert]`.
    grids: Annotated[list[ExpertSpec], msgspec.Meta(max_length=64)] = msgspec.field(default_factory=list)

    @property
    def expert_grids(self) -> list[ExpertSpec]:
        """The grids agents serve: `grids`, or the single `expert` grid of a config that names none."""
        return list(self.grids) or [self.expert]

    @property
    def portal_key(self) -> bytes:
        return bytes.fromhex(self.portal_public_key)


def parse_project_config(data: object) -> ProjectConfig:
    return convert(data, ProjectConfig, "project config")


def project_config_to_dict(config: ProjectConfig) -> dict[str, Any]:
    data: dict[str, Any] = msgspec.to_builtins(config)
    return data

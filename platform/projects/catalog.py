"""What a project may be made of: tasks, datasets, expert architectures, optimisers and the expert grids.

The portal never imports the agent's training code (torch); it keeps the names here, and they match the
node agent's dataset registry so a project's config can be handed to agents as is.
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_GRID_DIMS = 4
MAX_GRID_SIDE = 1024


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    label: str
    features: int
    classes: int
    samples: int


DATASETS: dict[str, DatasetInfo] = {
    info.name: info
    for info in (
        DatasetInfo("digits", "Handwritten digits (8x8 images)", features=64, classes=10, samples=1797),
        DatasetInfo("iris", "Iris flowers", features=4, classes=3, samples=150),
        DatasetInfo("wine", "Wine cultivars", features=13, classes=3, samples=178),
        DatasetInfo("breast_cancer", "Breast cancer diagnosis", features=30, classes=2, samples=569),
    )
}
DATASET_CHOICES = [(info.name, info.label) for info in DATASETS.values()]

#: A project trains a classifier on a tabular dataset, or a byte-level Transformer language model whose
#: blocks' feed-forward layers are expert grids (`node_agent.training.lm`).
TASK_CLASSIFICATION = "classification"
TASK_LM = "lm"
TASK_CHOICES = [
    (TASK_CLASSIFICATION, "Classification (a tabular dataset)"),
    (TASK_LM, "Language modelling (a byte-level Transformer)"),
]
#: Where a language model's text comes from; the trainer reads it, volunteers only ever see hidden states.
CORPUS_CHOICES = [
    ("python-stdlib", "Built in: the Python standard library's source files"),
    ("own", "The researcher's own text (stays on their machine; given to the trainer with --text)"),
]
#: Grid names of a language model's blocks start with this (`lm.b0`, `lm.b1`, ...).
LM_UID_PREFIX = "lm"
#: Bounds of a language model's shape; the agent's `LMSpec` accepts no more.
LM_MAX_BLOCKS = 64
LM_MAX_SEQ_LEN = 4096
LM_MAX_HEADS = 64
#: Experts one volunteer's agent hosts unless told otherwise (`node-agent join --experts`): 4, or one per grid
#: when there are more grids, within `VOLUNTEER_MEMORY_BYTES` while training, at least one (the agent's
#: `census.default_expert_count`, kept in step by a test).
DEFAULT_EXPERTS_PER_VOLUNTEER = 4
VOLUNTEER_MEMORY_BYTES = 2 * 1024**3

ARCHITECTURE_CHOICES = [("ffn", "Feed-forward block"), ("transformer", "Transformer block")]
OPTIMIZER_CHOICES = [("adam", "Adam"), ("adamw", "AdamW"), ("sgd", "SGD with momentum")]


def parse_grid_shape(text: str, *, max_cells: int | None = None) -> tuple[int, ...]:
    """Parse an expert grid such as "16x16" (1 to 4 dimensions, each 1..1024) or raise ValueError.

    `max_cells` bounds the whole grid (new and edited projects pass settings.PROJECT_MAX_GRID_CELLS): a
    swarm cannot serve more experts, and pages and the observer would pay for every cell. Reading an
    existing project's grid passes None, so older, larger grids still load (and are shown summarised).
    """
    parts = text.strip().lower().replace("\u00d7", "x").split("x")
    if not 1 <= len(parts) <= MAX_GRID_DIMS:
        raise ValueError(f"a grid has 1 to {MAX_GRID_DIMS} dimensions, like 16x16")
    dims: list[int] = []
    for part in parts:
        part = part.strip()
        if not part:
            raise ValueError("a dimension is missing; write the grid like 16x16")
        if not part.isdigit():
            raise ValueError(f"{part!r} is not a whole number; write the grid like 16x16")
        side = int(part)
        if not 1 <= side <= MAX_GRID_SIDE:
            raise ValueError(f"each grid dimension must be between 1 and {MAX_GRID_SIDE}, got {side}")
        dims.append(side)
    cells = grid_size(tuple(dims))
    if max_cells is not None and cells > max_cells:
        raise ValueError(f"a grid may have at most {max_cells:,} cells in all, got {cells:,}")
    return tuple(dims)


def format_grid_shape(dims: tuple[int, ...]) -> str:
    return "x".join(str(side) for side in dims)


def grid_size(dims: tuple[int, ...]) -> int:
    total = 1
    for side in dims:
        total *= side
    return total


#: Bytes per expert parameter while training: float32 weight, gradient and Adam's two moments.
TRAINING_BYTES_PER_PARAMETER = 16


#: Parameters of one expert as (a, b) of a*d^2 + b*d, exactly as the node agent builds it
#: (`node_agent.moe.experts`): `ffn` is d -> 4d -> d with a LayerNorm; `transformer` one encoder layer with
#: a 4d feed-forward. The form's script gets this table too, so its live figures use the same numbers.
EXPERT_PARAMETER_COEFFICIENTS: dict[str, tuple[int, int]] = {"ffn": (8, 7), "transformer": (12, 13)}


def expert_parameters(architecture: str, hidden_size: int) -> int:
    """Parameters of one expert of `architecture` with hidden size `hidden_size`."""
    if architecture not in EXPERT_PARAMETER_COEFFICIENTS:
        raise ValueError(f"unknown expert architecture {architecture!r}")
    a, b = EXPERT_PARAMETER_COEFFICIENTS[architecture]
    return a * hidden_size * hidden_size + b * hidden_size


def lm_block_prefix(block: int) -> str:
    """Grid name of a language model's block: `lm.b3` (as `node_agent.training.lm.block_prefix` spells it;
    the portal keeps its own copy so that pages never import torch, and a test checks the two agree)."""
    return f"{LM_UID_PREFIX}.b{block}"


@dataclass(frozen=True)
class ModelScale:
    """What volunteers host for a project: its grids, their parameters and the memory an expert needs."""

    blocks: int
    experts_per_block: int
    parameters_per_expert: int
    volunteer_experts: int = DEFAULT_EXPERTS_PER_VOLUNTEER

    @property
    def total_experts(self) -> int:
        return self.blocks * self.experts_per_block

    @property
    def total_parameters(self) -> int:
        return self.total_experts * self.parameters_per_expert

    @property
    def memory_per_expert_bytes(self) -> int:
        return self.parameters_per_expert * TRAINING_BYTES_PER_PARAMETER

    @property
    def volunteer_hosts(self) -> int:
        """Experts one volunteer hosts by default (never more than the grids have): the agent's rule."""
        wanted = max(self.volunteer_experts, self.blocks)
        affordable = VOLUNTEER_MEMORY_BYTES // max(1, self.memory_per_expert_bytes)
        return max(1, min(wanted, affordable, self.total_experts))

    @property
    def volunteer_memory_bytes(self) -> int:
        return self.volunteer_hosts * self.memory_per_expert_bytes

    @property
    def volunteers_to_cover(self) -> int:
        """Volunteers needed for one replica of every expert, each hosting the default number."""
        return -(-self.total_experts // self.volunteer_hosts)


def model_scale(architecture: str, hidden_size: int, dims: tuple[int, ...], blocks: int = 1) -> ModelScale:
    """The scale of `blocks` grids of shape `dims` (a classifier has one), experts of `architecture`."""
    return ModelScale(
        blocks=blocks,
        experts_per_block=grid_size(dims),
        parameters_per_expert=expert_parameters(architecture, hidden_size),
    )


def format_bytes(n: int) -> str:
    """Memory on pages: 4_210_688 -> "4.0 MiB"."""
    for size, unit in ((2**40, "TiB"), (2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def format_count(n: int) -> str:
    """2_147_000_000 -> "2.1 billion": parameter counts on pages."""
    for size, word in ((10**9, "billion"), (10**6, "million"), (10**3, "thousand")):
        if n >= size:
            return f"{n / size:.1f} {word}"
    return str(n)

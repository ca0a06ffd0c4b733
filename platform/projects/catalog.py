"""What a project may be made of: datasets, expert architectures, optimisers and the expert grid.

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


def expert_parameters(architecture: str, hidden_size: int) -> int:
    """Parameters of one expert, exactly as the node agent builds it (`node_agent.moe.experts`):
    `ffn` is d -> 4d -> d with a LayerNorm (8d^2 + 7d); `transformer` one encoder layer with a 4d
    feed-forward (12d^2 + 13d)."""
    d = hidden_size
    if architecture == "ffn":
        return 8 * d * d + 7 * d
    if architecture == "transformer":
        return 12 * d * d + 13 * d
    raise ValueError(f"unknown expert architecture {architecture!r}")


def format_count(n: int) -> str:
    """2_147_000_000 -> "2.1 billion": parameter counts on pages."""
    for size, word in ((10**9, "billion"), (10**6, "million"), (10**3, "thousand")):
        if n >= size:
            return f"{n / size:.1f} {word}"
    return str(n)

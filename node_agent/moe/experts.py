"""Registry of expert classes: name -> how to build the module and a sample input (which fixes its schema).

Built in: `ffn` (pre-norm feed-forward block with a residual, as in Learning@home's experiments),
`transformer` (one encoder layer over `(batch, seq, hidden)`), and `nop` (identity, for benchmarking the
transport). Register your own with `register_expert_class`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True, slots=True)
class ExpertClass:
    name: str
    build: Callable[[int], nn.Module]
    #: (batch size, hidden dim) -> example inputs; the server derives the input/output schema from it.
    sample_input: Callable[[int, int], list[torch.Tensor]]


_REGISTRY: dict[str, ExpertClass] = {}


def register_expert_class(
    name: str, build: Callable[[int], nn.Module], sample_input: Callable[[int, int], list[torch.Tensor]]
) -> None:
    if name in _REGISTRY:
        raise ValueError(f"expert class {name!r} is already registered")
    _REGISTRY[name] = ExpertClass(name, build, sample_input)


def get_expert_class(name: str) -> ExpertClass:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown expert class {name!r}; known: {', '.join(sorted(_REGISTRY))}") from None


def expert_class_names() -> list[str]:
    return sorted(_REGISTRY)


class FeedForwardExpert(nn.Module):
    """x + W2 gelu(W1 layernorm(x)): the pre-norm transformer feed-forward block."""

    def __init__(self, hidden_dim: int, expansion: int = 4) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(hidden_dim)
        self.up = nn.Linear(hidden_dim, expansion * hidden_dim)
        self.down = nn.Linear(expansion * hidden_dim, hidden_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.down(nn.functional.gelu(self.up(self.norm(x))))


class TransformerExpert(nn.Module):
    """One pre-norm transformer encoder layer over (batch, seq, hidden)."""

    def __init__(self, hidden_dim: int, num_heads: int = 4) -> None:
        super().__init__()
        heads = num_heads if hidden_dim % num_heads == 0 else 1
        self.layer = nn.TransformerEncoderLayer(
            hidden_dim, heads, 4 * hidden_dim, dropout=0.0, batch_first=True, norm_first=True
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class NopExpert(nn.Module):
    """Returns its input (gradient: identity); no parameters, so backward applies no optimiser step."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.clone()


TRANSFORMER_SAMPLE_SEQ = 16

register_expert_class("ffn", FeedForwardExpert, lambda batch, dim: [torch.randn(batch, dim)])
register_expert_class(
    "transformer", TransformerExpert, lambda batch, dim: [torch.randn(batch, TRANSFORMER_SAMPLE_SEQ, dim)]
)
register_expert_class("nop", lambda dim: NopExpert(), lambda batch, dim: [torch.randn(batch, dim)])

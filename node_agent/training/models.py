"""The trainer's model: local layers around one Mixture-of-Experts layer (local or decentralized).

`MoEClassifier` is deliberately small (it trains on the bundled tabular datasets in seconds): a local stem
projects features to `hidden_dim`, the MoE layer adds its mixture as a residual (so a step where every
expert was masked still trains the local layers), a LayerNorm and a linear head give class logits.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

__all__ = ["MoEClassifier", "build_local_moe", "parse_grid"]


def parse_grid(text: str) -> tuple[int, ...]:
    """`"4x4"` -> `(4, 4)`; also accepts `"4,4"` and a single `"16"`."""
    parts = text.replace(",", "x").lower().split("x")
    try:
        sizes = tuple(int(part) for part in parts if part.strip())
    except ValueError:
        raise ValueError(f"bad grid {text!r}: expected sizes like 4x4") from None
    if not sizes or any(size <= 0 for size in sizes):
        raise ValueError(f"bad grid {text!r}: expected positive sizes like 4x4")
    return sizes


class MoEClassifier(nn.Module):
    def __init__(self, num_features: int, num_classes: int, hidden_dim: int, moe: nn.Module):
        super().__init__()
        self.stem = nn.Sequential(nn.Linear(num_features, hidden_dim), nn.ReLU())
        self.moe = moe
        self.norm = nn.LayerNorm(hidden_dim)
        self.head = nn.Linear(hidden_dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.stem(x)
        hidden = hidden + self.moe(hidden)
        return self.head(torch.relu(self.norm(hidden)))

    def moe_layers(self) -> list[nn.Module]:
        """Layers that report expert call statistics (`take_stats()`): the decentralized ones."""
        return [module for module in self.modules() if callable(getattr(module, "take_stats", None))]

    def auxiliary_loss(self) -> torch.Tensor | None:
        """Sum of the MoE layers' auxiliary losses of the last forward (Switch load balancing), if any."""
        terms = [t for m in self.modules() if isinstance(t := getattr(m, "aux_loss", None), torch.Tensor)]
        return torch.stack(terms).sum() if terms else None


def build_local_moe(
    hidden_dim: int,
    grid_size: Sequence[int],
    uid_prefix: str,
    expert_factory: Callable[[str], nn.Module],
    k_best: int,
) -> nn.Module:
    """A `LocalMixtureOfExperts` with one expert per grid cell, built by `expert_factory(uid)`."""
    from node_agent.moe.layer import LocalMixtureOfExperts
    from node_agent.moe.uids import expand_pattern

    pattern = uid_prefix.rstrip(".") + "".join(f".[0:{size}]" for size in grid_size)
    experts = {uid: expert_factory(uid) for uid in expand_pattern(pattern)}
    return LocalMixtureOfExperts(hidden_dim, grid_size, uid_prefix, experts, k_best)

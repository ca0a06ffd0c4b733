"""Switch-style decentralized MoE: one expert per sample, scaled by its gate probability, plus load balancing.

Switch Transformers (Fedus, Zoph & Shazeer 2021, section 2.1) route each token to its single best expert
and multiply the expert's output by the router probability, so the router still gets a gradient; an
auxiliary loss `N * sum_i f_i * P_i` (eq. 4-6: `f_i` the fraction of tokens sent to expert i, `P_i` the mean
router probability of i) pushes towards a uniform load. On a Learning@home grid the router is factorised
per dimension (`p(i, j) = softmax(s0)[i] * softmax(s1)[j]`, which equals the softmax over summed scores on a
full grid), so the balancing term is applied per dimension and averaged; it needs no knowledge of which
cells are alive.

A sample whose expert fails gets a zero output (like a token over capacity in Switch, it passes only
through the surrounding residual connection), so `allow_zero_outputs` defaults to True here.
"""

from __future__ import annotations

from typing import Any

import torch

from node_agent.moe.layer import _GridMixtureBase

__all__ = ["RemoteSwitchMixtureOfExperts", "switch_balance_loss"]


def switch_balance_loss(
    probabilities: list[torch.Tensor], coords: torch.Tensor, routed: torch.Tensor
) -> torch.Tensor:
    """Per-dimension Switch load-balancing loss, averaged over dimensions; 1.0 at perfect balance.

    `probabilities[d]` is the router's softmax over dimension d `[B, n_d]`; `coords [B, dims]` the chosen
    cell of each sample; `routed [B]` whether the sample got an expert (unrouted samples count in `P` only).
    """
    terms = []
    count = routed.sum().clamp(min=1).to(probabilities[0].dtype)
    for dim, probs in enumerate(probabilities):
        size = probs.shape[1]
        chosen = torch.nn.functional.one_hot(coords[:, dim], size).to(probs.dtype) * routed.unsqueeze(1)
        fraction = chosen.sum(dim=0) / count  # f: no gradient, it comes from an argmax
        mean_probability = probs.mean(dim=0)  # P: differentiable
        terms.append(size * (fraction * mean_probability).sum())
    return torch.stack(terms).mean()


class RemoteSwitchMixtureOfExperts(_GridMixtureBase):
    """One live expert per sample (the best-scoring one), output scaled by its router probability.

    After each forward, `aux_loss` holds the load-balancing loss of that batch; the trainer adds it to
    the task loss with a small weight (Switch uses 0.01). Arguments as `RemoteMixtureOfExperts`, without
    `k_best` (always 1).
    """

    def __init__(self, **kwargs: Any):
        kwargs.pop("k_best", None)
        kwargs.setdefault("allow_zero_outputs", True)
        kwargs.setdefault("timeout_after_k_min", 0.0)
        super().__init__(k_best=1, **kwargs)
        self.aux_loss: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        leading = x.shape[:-1]
        flat = x.reshape(-1, x.shape[-1])
        routed = self.call_experts(flat, 1)
        probabilities = [torch.softmax(scores, dim=-1) for scores in routed.grid_scores]
        coords = routed.coords[:, 0]  # [B, dims]
        gate = torch.ones(flat.shape[0], dtype=flat.dtype)
        for dim, probs in enumerate(probabilities):
            gate = gate * torch.gather(probs, 1, coords[:, dim : dim + 1]).squeeze(1)
        gate = gate * routed.answered[:, 0].to(flat.dtype)
        self.aux_loss = switch_balance_loss(probabilities, coords, routed.routed[:, 0])
        output = routed.outputs[:, 0] * gate.unsqueeze(1)
        return output.reshape(*leading, self.out_features)

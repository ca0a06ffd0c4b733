"""What one sample of a built-in expert class costs, in floating-point operations (matmuls only).

The portal prices receipts with these numbers, never with anything a node reports: a forward sample costs
`forward`, a backward sample `backward` (gradients w.r.t. inputs and weights: twice the forward's matmuls).
Counted as 2 x M x N x K per matrix product, as `torch.utils.flop_counter` does; element-wise work (norms,
activations) is left out, which is what `tests/node_agent/credit/test_flops.py` checks against torch.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Tokens per `transformer` sample (`node_agent.moe.experts.TRANSFORMER_SAMPLE_SEQ`; not imported from there,
#: which imports torch: the portal prices receipts without loading torch). A test keeps the two equal.
TRANSFORMER_SEQ = 16

__all__ = ["SampleFlops", "sample_flops"]


@dataclass(frozen=True, slots=True)
class SampleFlops:
    forward: int
    backward: int

    def credit(self, forward_samples: int, backward_samples: int) -> int:
        return forward_samples * self.forward + backward_samples * self.backward


def sample_flops(expert_class: str, hidden_dim: int) -> SampleFlops:
    """FLOPs per sample of `expert_class` at `hidden_dim`; ValueError for a class we cannot price."""
    d = hidden_dim
    if expert_class == "ffn":  # up d -> 4d, down 4d -> d
        forward = 2 * (2 * d * 4 * d)
    elif expert_class == "transformer":  # per sequence of S tokens: qkv, out, scores, mix, ffn
        s = TRANSFORMER_SEQ
        forward = 2 * s * d * 3 * d + 2 * s * d * d + 2 * (2 * s * s * d) + 2 * (2 * s * d * 4 * d)
    elif expert_class == "nop":
        forward = 0
    else:
        raise ValueError(f"no FLOPs model for expert class {expert_class!r}")
    return SampleFlops(forward=forward, backward=2 * forward)

"""A causal byte-level Transformer language model whose feed-forward layers are decentralized MoE layers.

Learning@home's experiments: a Transformer where each block's feed-forward layer is a Mixture-of-Experts over
its own expert grid (`lm.b0.[i].[j]`, `lm.b1.[i].[j]`, ...) served by volunteers. Each token is routed on its
own (the MoE layers flatten `[batch, seq, hidden]` into `[tokens, hidden]`): top-`k_best` experts, masked
softmax over those that answered, `k_min` as everywhere else. Embedding, attention, the gates, the final norm
and the head stay with the trainer; volunteers see hidden states only, never the text.

Attention is local (each byte sees the previous `window` bytes, itself included), so the cost per token stays
bounded when sequences get longer. The `ffn` expert is a pre-norm residual block (`x + f(norm(x))`); a mixture
of residual blocks whose weights sum to 1 is itself one, so a block is `h += attn(norm(h)); h = moe(h)`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from node_agent.training.text import VOCAB_SIZE

__all__ = ["ByteTransformerLM", "LMConfig", "block_prefix", "block_uid_patterns", "grid_parameters"]


@dataclass(frozen=True, slots=True)
class LMConfig:
    hidden_dim: int = 256
    blocks: int = 2
    grid: tuple[int, ...] = (4, 4)
    seq_len: int = 128
    window: int = 64
    heads: int = 4
    uid_prefix: str = "lm"
    expert_class: str = "ffn"
    k_best: int = 4

    def __post_init__(self) -> None:
        if self.blocks <= 0 or self.seq_len <= 0 or self.window <= 0:
            raise ValueError("blocks, seq_len and window must be positive")
        if self.hidden_dim <= 0 or self.hidden_dim % self.heads:
            raise ValueError(
                f"hidden_dim {self.hidden_dim} must be a positive multiple of heads {self.heads}"
            )


def block_prefix(uid_prefix: str, block: int) -> str:
    """The grid name of block `block`: `lm.b3` (its experts are `lm.b3.<i>.<j>`)."""
    return f"{uid_prefix.rstrip('.')}.b{block}"


def block_uid_patterns(config: LMConfig) -> list[str]:
    """One pattern per block covering its whole grid, for `node-agent serve --experts`."""
    tail = "".join(f".[0:{size}]" for size in config.grid)
    return [block_prefix(config.uid_prefix, block) + tail for block in range(config.blocks)]


def grid_parameters(config: LMConfig) -> tuple[int, int]:
    """(parameters of one expert, parameters across every block's grid) for the configured expert class."""
    from node_agent.moe.experts import get_expert_class

    expert = get_expert_class(config.expert_class).build(config.hidden_dim)
    per_expert = sum(p.numel() for p in expert.parameters())
    return per_expert, per_expert * math.prod(config.grid) * config.blocks


class LocalCausalSelfAttention(nn.Module):
    """Multi-head self-attention where position i attends to positions (i - window, i]."""

    def __init__(self, hidden_dim: int, heads: int, window: int):
        super().__init__()
        self.heads = heads
        self.window = window
        self.qkv = nn.Linear(hidden_dim, 3 * hidden_dim)
        self.out = nn.Linear(hidden_dim, hidden_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, seq, dim = x.shape
        q, k, v = self.qkv(x).view(batch, seq, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        positions = torch.arange(seq, device=x.device)
        distance = positions[:, None] - positions[None, :]
        allowed = (distance >= 0) & (distance < self.window)
        attended = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
        return self.out(attended.transpose(1, 2).reshape(batch, seq, dim))


class LMBlock(nn.Module):
    def __init__(self, config: LMConfig, moe: nn.Module):
        super().__init__()
        self.norm = nn.LayerNorm(config.hidden_dim)
        self.attention = LocalCausalSelfAttention(config.hidden_dim, config.heads, config.window)
        self.moe = moe

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        h = h + self.attention(self.norm(h))
        return self.moe(h)  # the experts are residual blocks: see the module docstring


class ByteTransformerLM(nn.Module):
    """Bytes `[batch, seq]` -> next-byte logits `[batch, seq, 256]`.

    `moe_factory(block, grid_name)` builds each block's MoE layer: a `RemoteMixtureOfExperts` over the swarm,
    or a `LocalMixtureOfExperts` (same routing, in-process experts) for the baseline and the tests.
    """

    def __init__(self, config: LMConfig, moe_factory: Callable[[int, str], nn.Module]):
        super().__init__()
        self.config = config
        self.embedding = nn.Embedding(VOCAB_SIZE, config.hidden_dim)
        self.position = nn.Embedding(config.seq_len, config.hidden_dim)
        self.blocks = nn.ModuleList(
            LMBlock(config, moe_factory(block, block_prefix(config.uid_prefix, block)))
            for block in range(config.blocks)
        )
        self.norm = nn.LayerNorm(config.hidden_dim)
        self.head = nn.Linear(config.hidden_dim, VOCAB_SIZE)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if tokens.dim() != 2 or tokens.shape[1] > self.config.seq_len:
            raise ValueError(f"expected tokens [batch, <= {self.config.seq_len}], got {tuple(tokens.shape)}")
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        h = self.embedding(tokens) + self.position(positions)
        for block in self.blocks:
            h = block(h)
        return self.head(self.norm(h))

    def moe_layers(self) -> list[nn.Module]:
        """Layers that report expert call statistics (`take_stats()`): the decentralized ones."""
        return [module for module in self.modules() if callable(getattr(module, "take_stats", None))]

    def trainer_parameters(self) -> int:
        """Parameters the trainer holds itself (embedding, attention, gates, head; local experts excluded)."""
        experts = {
            id(p)
            for m in self.modules()
            if isinstance(group := getattr(m, "experts", None), nn.Module)
            for p in group.parameters()
        }
        return sum(p.numel() for p in self.parameters() if id(p) not in experts)

    @torch.no_grad()
    def generate(
        self,
        prompt: torch.Tensor,
        max_new: int,
        temperature: float = 0.8,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Sample `max_new` bytes after `prompt` `[n]`; the context is the last `seq_len` bytes."""
        tokens = prompt.long().clone()
        for _ in range(max_new):
            context = tokens[-self.config.seq_len :].unsqueeze(0)
            logits = self(context)[0, -1].float()
            if temperature <= 0:
                next_token = logits.argmax().view(1)
            else:
                probs = torch.softmax(logits / temperature, dim=-1)
                next_token = torch.multinomial(probs, 1, generator=generator)
            tokens = torch.cat([tokens, next_token])
        return tokens[len(prompt) :]

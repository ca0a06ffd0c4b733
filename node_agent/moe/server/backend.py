"""One hosted expert: its module, optimiser, learning-rate schedule, gradient clipping and schemas.

Learning@home (section 3.2): the server is stateless towards trainers; a backward request carries the
inputs again, the server recomputes the forward with autograd, backpropagates the trainer's output
gradients, applies its own optimiser step, and returns the gradients w.r.t. the inputs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from node_agent.tensor_codec import TensorSchema


@dataclass(frozen=True, slots=True)
class OptimizerConfig:
    name: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 0
    #: Total steps for linear decay to zero after warm-up; 0 keeps the rate constant.
    total_steps: int = 0
    clip_grad_norm: float | None = 1.0

    def build(self, params: list[nn.Parameter]) -> torch.optim.Optimizer | None:
        if not params:
            return None
        if self.name == "adam":
            return torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)
        if self.name == "sgd":
            return torch.optim.SGD(params, lr=self.lr, weight_decay=self.weight_decay)
        raise ValueError(f"unknown optimiser {self.name!r} (adam, sgd)")

    def schedule(self) -> Callable[[int], float]:
        def factor(step: int) -> float:
            if self.warmup_steps and step < self.warmup_steps:
                return (step + 1) / self.warmup_steps
            if self.total_steps:
                return max(
                    0.0, 1.0 - (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps)
                )
            return 1.0

        return factor


class ExpertBackend:
    """Runs forward/backward for one expert; called from the runtime's compute thread only."""

    def __init__(
        self,
        uid: str,
        module: nn.Module,
        sample_inputs: Sequence[torch.Tensor],
        optimizer: OptimizerConfig | None = None,
        expert_class: str = "custom",
    ) -> None:
        self.uid = uid
        self.module = module
        self.expert_class = expert_class
        self.config = optimizer or OptimizerConfig()
        params = [p for p in module.parameters() if p.requires_grad]
        self.optimizer = self.config.build(params)
        self.scheduler = (
            torch.optim.lr_scheduler.LambdaLR(self.optimizer, self.config.schedule())
            if self.optimizer
            else None
        )
        self.input_schema = [TensorSchema.of(t) for t in sample_inputs]
        with torch.no_grad():
            outputs = self._as_list(module(*sample_inputs))
        self.output_schema = [TensorSchema.of(t) for t in outputs]
        self.steps = 0
        self.samples_forward = 0
        self.samples_backward = 0

    @staticmethod
    def _as_list(outputs: Any) -> list[torch.Tensor]:
        return list(outputs) if isinstance(outputs, list | tuple) else [outputs]

    def forward(self, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        with torch.no_grad():
            outputs = self._as_list(self.module(*inputs))
        self.samples_forward += inputs[0].shape[0] if inputs and inputs[0].dim() else 0
        return outputs

    def backward(
        self, inputs: Sequence[torch.Tensor], grad_outputs: Sequence[torch.Tensor]
    ) -> list[torch.Tensor]:
        """Gradients w.r.t. `inputs`; applies one optimiser step (clipping, schedule) as a side effect."""
        leaves = [t.detach().requires_grad_(t.is_floating_point()) for t in inputs]
        with torch.enable_grad():
            outputs = self._as_list(self.module(*leaves))
            pairs = [(o, g) for o, g in zip(outputs, grad_outputs, strict=True) if o.requires_grad]
            if pairs:
                torch.autograd.backward([o for o, _ in pairs], [g for _, g in pairs])
        grads = [leaf.grad if leaf.grad is not None else torch.zeros_like(leaf) for leaf in leaves]
        if self.optimizer is not None:
            params = [p for group in self.optimizer.param_groups for p in group["params"]]
            if self.config.clip_grad_norm:
                norm = torch.nn.utils.clip_grad_norm_(params, self.config.clip_grad_norm)
                if not math.isfinite(float(norm)):
                    self.optimizer.zero_grad(set_to_none=True)
                    raise ValueError("non-finite gradient norm; optimiser step skipped")
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            if self.scheduler is not None:
                self.scheduler.step()
            self.steps += 1
        self.samples_backward += inputs[0].shape[0] if inputs and inputs[0].dim() else 0
        return [g.detach() for g in grads]

    def info(self) -> dict[str, Any]:
        """What `info` answers: schemas, class and training progress."""
        return {
            "uid": self.uid,
            "class": self.expert_class,
            "inputs": [s.to_dict() for s in self.input_schema],
            "outputs": [s.to_dict() for s in self.output_schema],
            "steps": self.steps,
            "lr": self.optimizer.param_groups[0]["lr"] if self.optimizer else 0.0,
            "parameters": sum(p.numel() for p in self.module.parameters()),
        }


def create_backends(
    uids: Sequence[str],
    expert_class: str,
    hidden_dim: int,
    optimizer: OptimizerConfig | None = None,
    seed: int | None = None,
    sample_batch: int = 2,
) -> dict[str, ExpertBackend]:
    """One backend per uid of a registered expert class; `seed` makes the initial weights reproducible."""
    from node_agent.moe.experts import get_expert_class

    cls = get_expert_class(expert_class)
    backends = {}
    for index, uid in enumerate(uids):
        if seed is not None:
            torch.manual_seed(seed + index)
        module = cls.build(hidden_dim)
        sample = cls.sample_input(sample_batch, hidden_dim)
        backends[uid] = ExpertBackend(uid, module, sample, optimizer, expert_class=expert_class)
    return backends

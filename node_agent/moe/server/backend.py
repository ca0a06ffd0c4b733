"""One hosted expert: its module, optimiser, learning-rate schedule, gradient clipping and schemas.

Two ways to run backward:

* Recompute (Learning@home, section 3.2): the backward request carries the inputs again; `backward`
  recomputes the forward with autograd, backpropagates the trainer's output gradients, applies one optimiser
  step and returns the gradients w.r.t. the inputs. Stateless, but two forwards and one backward per batch.
* Kept graph (`forward_kept` / `backward_kept`, used with `forward_cache`): the forward is run with autograd
  and its graph kept, so backward costs one backward. Optimiser steps change the parameters in place, which
  would corrupt the graphs of forwards still waiting for their backward, so a kept forward runs against a
  *snapshot* of the trainable parameters (`torch.func.functional_call` with detached copies). One snapshot
  serves every kept forward between two optimiser steps (a "generation"); when no kept graph refers to the
  previous generation any more (`snapshot_in_use`), its tensors are overwritten in place instead of
  allocating fresh ones. The gradient w.r.t. the snapshot is applied to the live parameters by the
  optimiser: a delayed gradient as in Learning@home (section 3.3), exact for the forward the trainer saw.
  `backward_kept` answers one request and adds its parameter gradients to an accumulator; the server
  decides when `step_accumulated` applies them (one optimiser step for several trainers' backwards, as one
  concatenated recompute batch would have).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

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
            try:  # one fused kernel per step: ~2.5x faster than the per-tensor loop on CPU
                return torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay, fused=True)
            except (RuntimeError, ValueError):  # a device or dtype the fused kernel does not support
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


@dataclass(slots=True)
class KeptForward:
    """The autograd graph of one forward request, computed against a parameter snapshot."""

    leaves: list[torch.Tensor]
    outputs: list[torch.Tensor]
    params: list[torch.Tensor]
    #: Bytes the graph holds beyond the shared snapshot (saved activations, inputs, outputs).
    nbytes: int
    generation: tuple[str, int]

    @property
    def batch_size(self) -> int:
        return self.leaves[0].shape[0] if self.leaves and self.leaves[0].dim() else 0


class _SavedBytes:
    """Saved-tensor hooks that add up the storage a graph keeps alive, excluding the parameter snapshot."""

    def __init__(self, exclude: Sequence[torch.Tensor]) -> None:
        self.seen = {t.untyped_storage().data_ptr() for t in exclude}
        self.nbytes = 0

    def add(self, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in self.seen:
            self.seen.add(storage.data_ptr())
            self.nbytes += storage.nbytes()

    def pack(self, tensor: torch.Tensor) -> torch.Tensor:
        self.add(tensor)
        return tensor


def _unpack(tensor: torch.Tensor) -> torch.Tensor:
    return tensor


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
        named = [(name, p) for name, p in module.named_parameters() if p.requires_grad]
        self._param_names = [name for name, _ in named]
        self._params = [p for _, p in named]
        self.optimizer = self.config.build(self._params)
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
        #: Bytes of one parameter snapshot (what a generation of kept forwards shares).
        self.snapshot_bytes = sum(p.numel() * p.element_size() for p in self._params)
        self._snapshot: list[torch.Tensor] = []
        self._snapshot_step = -1
        self._generation = 0
        #: Set by the server: whether a kept graph still refers to a generation's snapshot. Unset, every
        #: generation gets fresh tensors (always safe).
        self.snapshot_in_use: Callable[[Hashable], bool] | None = None
        #: Parameter gradients of kept backwards not applied yet, and how many samples they cover.
        self._accumulated: list[torch.Tensor | None] = [None] * len(self._params)
        self.accumulated_samples = 0

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
        """Gradients w.r.t. `inputs` by recomputing the forward; one optimiser step as a side effect."""
        leaves = [t.detach().requires_grad_(t.is_floating_point()) for t in inputs]
        with torch.enable_grad():
            outputs = self._as_list(self.module(*leaves))
            pairs = [(o, g) for o, g in zip(outputs, grad_outputs, strict=True) if o.requires_grad]
            if pairs:
                torch.autograd.backward([o for o, _ in pairs], [g for _, g in pairs])
        grads = [leaf.grad if leaf.grad is not None else torch.zeros_like(leaf) for leaf in leaves]
        self._step()
        self.samples_backward += inputs[0].shape[0] if inputs and inputs[0].dim() else 0
        return [g.detach() for g in grads]

    def forward_kept(self, inputs: Sequence[torch.Tensor]) -> KeptForward:
        """Forward with autograd against the current parameter snapshot; the graph is returned for later."""
        params = self._current_snapshot()
        leaves = [t.detach().requires_grad_(t.is_floating_point()) for t in inputs]
        counter = _SavedBytes(exclude=params)
        with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(counter.pack, _unpack):
            outputs = self._as_list(
                functional_call(self.module, dict(zip(self._param_names, params, strict=True)), tuple(leaves))
            )
        for tensor in [*leaves, *outputs]:
            counter.add(tensor)
        self.samples_forward += inputs[0].shape[0] if inputs and inputs[0].dim() else 0
        return KeptForward(leaves, outputs, params, counter.nbytes, (self.uid, self._generation))

    def backward_kept(
        self, kept: KeptForward, grad_outputs: Sequence[torch.Tensor], samples: int | None = None
    ) -> list[torch.Tensor]:
        """Input gradients of one kept forward; its parameter gradients wait in the accumulator.

        Each graph yields gradients w.r.t. its own snapshot; their sum goes to the live parameters at the
        next `step_accumulated`, which is what one concatenated recompute batch would have produced had no
        step happened in between. `samples`: rows that carry gradients (default: all). Raises ValueError
        (nothing accumulated) for gradients that do not fit.
        """
        input_grads, param_grads = self._kept_gradients(kept, grad_outputs)
        for i, grad in enumerate(param_grads):
            if grad is not None:
                total = self._accumulated[i]
                self._accumulated[i] = grad if total is None else total.add_(grad)
        counted = kept.batch_size if samples is None else samples
        self.accumulated_samples += counted
        self.samples_backward += counted
        return input_grads

    def step_accumulated(self) -> bool:
        """Apply the accumulated gradients in one optimiser step; False if there were none.

        Raises ValueError when the gradients are not finite (the step is skipped and they are dropped).
        """
        if not self.accumulated_samples:
            return False
        for param, total in zip(self._params, self._accumulated, strict=True):
            param.grad = total
        self._accumulated = [None] * len(self._params)
        self.accumulated_samples = 0
        self._step()
        return True

    def _kept_gradients(
        self, kept: KeptForward, grad_outputs: Sequence[torch.Tensor]
    ) -> tuple[list[torch.Tensor], list[torch.Tensor | None]]:
        if len(grad_outputs) != len(kept.outputs):
            raise ValueError(f"expected {len(kept.outputs)} output gradients, got {len(grad_outputs)}")
        for output, grad in zip(kept.outputs, grad_outputs, strict=True):
            if grad.shape != output.shape or grad.dtype != output.dtype:
                raise ValueError(
                    f"gradient {tuple(grad.shape)} {grad.dtype} does not match the kept forward's output "
                    f"{tuple(output.shape)} {output.dtype}"
                )
        pairs = [(o, g) for o, g in zip(kept.outputs, grad_outputs, strict=True) if o.requires_grad]
        wanted = [leaf for leaf in kept.leaves if leaf.requires_grad] + kept.params
        found: list[torch.Tensor | None] = [None] * len(wanted)
        if pairs and wanted:
            found = list(
                torch.autograd.grad([o for o, _ in pairs], wanted, [g for _, g in pairs], allow_unused=True)
            )
        by_leaf = iter(found[: len(wanted) - len(kept.params)])
        input_grads = []
        for leaf in kept.leaves:
            leaf_grad = next(by_leaf) if leaf.requires_grad else None
            input_grads.append(torch.zeros_like(leaf) if leaf_grad is None else leaf_grad.detach())
        return input_grads, found[len(wanted) - len(kept.params) :]

    def forget_snapshot(self) -> None:
        """The parameters changed outside an optimiser step (a loaded or averaged state): the next kept
        forward takes a fresh snapshot."""
        self._snapshot_step = -1

    def _current_snapshot(self) -> list[torch.Tensor]:
        """Detached copies of the trainable parameters, taken at most once per optimiser step."""
        if self._snapshot_step == self.steps and len(self._snapshot) == len(self._params):
            return self._snapshot
        previous = (self.uid, self._generation)
        if self._snapshot and self.snapshot_in_use is not None and not self.snapshot_in_use(previous):
            # Nothing refers to the old copies: overwrite them. Were that wrong, autograd's version check
            # would fail the stale graph's backward loudly rather than give wrong gradients.
            with torch.no_grad():
                for copy, param in zip(self._snapshot, self._params, strict=True):
                    copy.copy_(param)
        else:
            self._snapshot = [p.detach().clone().requires_grad_() for p in self._params]
        self._snapshot_step = self.steps
        self._generation += 1
        return self._snapshot

    def _step(self) -> None:
        """Clip, step, schedule: the optimiser part of every backward (no-op without parameters)."""
        if self.optimizer is None:
            return
        params = self._params
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

"""An expert's whole state as named tensors: what checkpoints save, state downloads send and replicas average.

Names: `module.<state_dict name>` for the module's parameters and buffers, `optim.<param index>.<name>`
for the optimiser's per-parameter tensors (Adam's `exp_avg`, `exp_avg_sq`, `step`; SGD's
`momentum_buffer`). The step counter travels beside the tensors. Called on the compute thread only (the
server's runtime), so no optimiser step runs while a state is read or written.
"""

from __future__ import annotations

import torch

from node_agent.averaging.state_download import StateSchema, StateSnapshot
from node_agent.moe.server.backend import ExpertBackend
from node_agent.tensor_codec import TensorSchema, dtype_name

MODULE_PREFIX = "module."
OPTIM_PREFIX = "optim."
#: Per-parameter optimiser tensors a state may carry (AdamW and SGD with momentum).
OPTIMIZER_TENSORS = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq", "momentum_buffer", "step")


def expert_state(backend: ExpertBackend) -> StateSnapshot:
    """A detached copy of the module and optimiser tensors, and the step."""
    tensors: dict[str, torch.Tensor] = {
        MODULE_PREFIX + name: value.detach().contiguous().clone()
        for name, value in backend.module.state_dict().items()
    }
    if backend.optimizer is not None:
        for index, state in backend.optimizer.state_dict()["state"].items():
            for name, value in state.items():
                if isinstance(value, torch.Tensor) and name in OPTIMIZER_TENSORS:
                    tensors[f"{OPTIM_PREFIX}{index}.{name}"] = value.detach().contiguous().clone()
    return StateSnapshot(step=backend.steps, tensors=tensors)


def expert_state_schema(backend: ExpertBackend) -> StateSchema:
    """What a state for this expert may hold: exactly its module tensors; optimiser tensors shaped like the
    parameter they belong to (or scalar step counters)."""
    allowed: dict[str, tuple[TensorSchema, ...]] = {}
    for name, value in backend.module.state_dict().items():
        allowed[MODULE_PREFIX + name] = (TensorSchema(dtype_name(value.dtype), tuple(value.shape)),)
    required = frozenset(allowed)
    if backend.optimizer is not None:
        params = [p for group in backend.optimizer.param_groups for p in group["params"]]
        for index, param in enumerate(params):
            like = TensorSchema(dtype_name(param.dtype), tuple(param.shape))
            scalar = TensorSchema("float32", ())
            for name in OPTIMIZER_TENSORS:
                allowed[f"{OPTIM_PREFIX}{index}.{name}"] = (scalar,) if name == "step" else (like,)
    return StateSchema(allowed=allowed, required=required)


def apply_expert_state(backend: ExpertBackend, tensors: dict[str, torch.Tensor], step: int) -> None:
    """Load a state (already checked against `expert_state_schema`) into the backend, step and schedule."""
    module_state = {
        k.removeprefix(MODULE_PREFIX): v for k, v in tensors.items() if k.startswith(MODULE_PREFIX)
    }
    current = backend.module.state_dict()
    backend.module.load_state_dict({k: v.to(current[k].dtype) for k, v in module_state.items()}, strict=True)
    if backend.optimizer is not None:
        state = backend.optimizer.state_dict()
        params = [p for group in state["param_groups"] for p in group["params"]]
        restored: dict[int, dict[str, torch.Tensor]] = {}
        for key, value in tensors.items():
            if key.startswith(OPTIM_PREFIX):
                _, index, name = key.split(".", 2)
                restored.setdefault(params[int(index)], {})[name] = value.clone()
        state["state"] = restored
        backend.optimizer.load_state_dict(state)
    backend.steps = step
    backend.forget_snapshot()  # kept forwards from now on see the loaded parameters
    if backend.scheduler is not None and backend.optimizer is not None:
        backend.scheduler.last_epoch = step
        factor = backend.config.schedule()(step)
        for group in backend.optimizer.param_groups:
            group["lr"] = group["initial_lr"] * factor

"""Checkpoints of the trainer's own parameters (gating and local layers) and optimiser state.

Remote experts keep their own weights on their servers; the trainer saves only what it owns. Files are
safetensors (no pickle: a checkpoint shared between volunteers cannot run code when loaded); optimiser
hyper-parameters and the step go into the file's string metadata as JSON.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

__all__ = ["Checkpoint", "latest_checkpoint", "load_checkpoint", "save_checkpoint"]

_MODEL = "model."
_OPTIM = "optim."


@dataclass(frozen=True, slots=True)
class Checkpoint:
    path: Path
    step: int


def save_checkpoint(
    directory: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None, step: int
) -> Checkpoint:
    """Write `step-<step>.safetensors` atomically (temp file + rename) and return where it went."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {_MODEL + name: value.detach().contiguous().cpu() for name, value in model.state_dict().items()}
    metadata: dict[str, str] = {"step": str(step)}
    if optimizer is not None:
        state = optimizer.state_dict()
        for param_id, param_state in state["state"].items():
            for key, value in param_state.items():
                if isinstance(value, torch.Tensor):
                    tensors[f"{_OPTIM}{param_id}.{key}"] = value.detach().contiguous().cpu()
        metadata["param_groups"] = json.dumps(state["param_groups"])
    path = directory / f"step-{step:08d}.safetensors"
    temporary = path.with_suffix(".tmp")
    save_file(tensors, str(temporary), metadata=metadata)
    os.replace(temporary, path)
    return Checkpoint(path, step)


def latest_checkpoint(directory: str | Path) -> Path | None:
    candidates = sorted(Path(directory).glob("step-*.safetensors"))
    return candidates[-1] if candidates else None


def load_checkpoint(
    path: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None
) -> int:
    """Restore parameters (and optimiser state if given) in place; return the saved step."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
    tensors = load_file(str(path))
    model_state = {name[len(_MODEL) :]: value for name, value in tensors.items() if name.startswith(_MODEL)}
    model.load_state_dict(model_state)
    if optimizer is not None and "param_groups" in metadata:
        state: dict[int, dict[str, torch.Tensor]] = {}
        for name, value in tensors.items():
            if name.startswith(_OPTIM):
                param_id, key = name[len(_OPTIM) :].split(".", 1)
                state.setdefault(int(param_id), {})[key] = value
        optimizer.load_state_dict({"state": state, "param_groups": json.loads(metadata["param_groups"])})
    return int(metadata.get("step", 0))

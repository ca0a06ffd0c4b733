"""Saving and restoring experts with safetensors (tensors only: nothing is unpickled on load).

One file per expert, `<dir>/<uid>.safetensors`: the module's state under `module.<name>`, the optimiser's
per-parameter tensors under `optim.<param index>.<name>`, and the step counters in the metadata.
Writes go to a temporary file first and are renamed, so a crash never leaves a torn checkpoint.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from node_agent.moe.server.backend import ExpertBackend

logger = logging.getLogger(__name__)


def checkpoint_path(directory: str | os.PathLike[str], uid: str) -> Path:
    return Path(directory) / f"{uid}.safetensors"


def save_checkpoint(directory: str | os.PathLike[str], backend: ExpertBackend) -> Path:
    tensors: dict[str, torch.Tensor] = {
        f"module.{k}": v.detach().contiguous().clone() for k, v in backend.module.state_dict().items()
    }
    if backend.optimizer is not None:
        for index, state in enumerate(backend.optimizer.state_dict()["state"].values()):
            for name, value in state.items():
                if isinstance(value, torch.Tensor):
                    tensors[f"optim.{index}.{name}"] = value.detach().contiguous().clone()
    metadata = {"uid": backend.uid, "class": backend.expert_class, "steps": str(backend.steps)}
    path = checkpoint_path(directory, backend.uid)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    os.replace(tmp, path)
    return path


def load_checkpoint(directory: str | os.PathLike[str], backend: ExpertBackend) -> bool:
    """Restore `backend` from its file if there is one; False when none exists."""
    path = checkpoint_path(directory, backend.uid)
    if not path.exists():
        return False
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
    tensors = load_file(str(path))
    module_state = {k.removeprefix("module."): v for k, v in tensors.items() if k.startswith("module.")}
    backend.module.load_state_dict(module_state, strict=True)
    if backend.optimizer is not None:
        state = backend.optimizer.state_dict()
        params = [p for group in state["param_groups"] for p in group["params"]]
        restored: dict[int, dict[str, torch.Tensor]] = {}
        for key, value in tensors.items():
            if key.startswith("optim."):
                _, index, name = key.split(".", 2)
                restored.setdefault(params[int(index)], {})[name] = value
        if restored:
            state["state"] = restored
            backend.optimizer.load_state_dict(state)
    backend.steps = int(metadata.get("steps", "0"))
    if backend.scheduler is not None and backend.optimizer is not None:
        backend.scheduler.last_epoch = backend.steps
        factor = backend.config.schedule()(backend.steps)
        for group in backend.optimizer.param_groups:
            group["lr"] = group["initial_lr"] * factor
    logger.info("restored %s from %s (step %d)", backend.uid, path, backend.steps)
    return True

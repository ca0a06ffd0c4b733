"""Saving and restoring experts with safetensors (tensors only: nothing is unpickled on load).

One file per expert, `<dir>/<uid>.safetensors`: the module's state under `module.<name>`, the optimiser's
per-parameter tensors under `optim.<param index>.<name>`, and the step counters in the metadata.
Writes go to a temporary file first and are renamed, so a crash never leaves a torn checkpoint.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from safetensors.torch import load_file, save_file

from node_agent.moe.server.backend import ExpertBackend
from node_agent.moe.server.state import apply_expert_state, expert_state

logger = logging.getLogger(__name__)


def checkpoint_path(directory: str | os.PathLike[str], uid: str) -> Path:
    return Path(directory) / f"{uid}.safetensors"


def save_checkpoint(directory: str | os.PathLike[str], backend: ExpertBackend) -> Path:
    snapshot = expert_state(backend)
    metadata = {"uid": backend.uid, "class": backend.expert_class, "steps": str(snapshot.step)}
    path = checkpoint_path(directory, backend.uid)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file(dict(snapshot.tensors), str(tmp), metadata=metadata)
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
    apply_expert_state(backend, load_file(str(path)), int(metadata.get("steps", "0")))
    logger.info("restored %s from %s (step %d)", backend.uid, path, backend.steps)
    return True

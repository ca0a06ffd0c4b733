"""Build the byte-level LM with local or decentralized MoE layers, train it, clean up.

Used by `node-agent train --task lm`, `node-agent generate` and `benchmarks/bench_lm.py`. In `remote` mode
each block's MoE layer is a `RemoteMixtureOfExperts` over the grid `lm.b<block>`; all blocks share one
`ExpertCaller` (one DHT client, one WebRTC pool). Seeded: both modes start from the same trainer weights.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from node_agent.training.checkpoints import latest_checkpoint, load_checkpoint
from node_agent.training.collaborative import (
    CollaborativeConfig,
    CollaborativeOptimizer,
    collaborate,
    record_collaboration,
)
from node_agent.training.lm import ByteTransformerLM, LMConfig
from node_agent.training.lm_trainer import LMTrainConfig, LMTrainer, LMTrainResult
from node_agent.training.metrics import MetricsStream
from node_agent.training.text import TextCorpus

__all__ = ["LMSessionConfig", "build_lm", "run_lm_training"]

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class LMSessionConfig:
    model: LMConfig = field(default_factory=LMConfig)
    mode: Literal["remote", "local"] = "remote"
    k_min: int = 1
    backward_k_min: int = 1
    forward_timeout: float = 10.0
    timeout_after_k_min: float = 1.0
    backward_timeout: float = 10.0
    resume_from: str | None = None
    seed: int = 0
    train: LMTrainConfig = field(default_factory=LMTrainConfig)
    #: Average the trainer's own gradients with the project's other trainers (needs the caller's DHT).
    collaborative: CollaborativeConfig | None = None


def build_lm(config: LMSessionConfig, caller: Any = None) -> ByteTransformerLM:
    """The LM with in-process experts (`local`) or experts on the swarm reached through `caller`."""
    from node_agent.moe.experts import get_expert_class
    from node_agent.moe.layer import LocalMixtureOfExperts, RemoteMixtureOfExperts
    from node_agent.moe.uids import expand_pattern

    model_config = config.model
    if config.mode == "remote" and caller is None:
        raise ValueError("remote mode needs an ExpertCaller")
    torch.manual_seed(config.seed)

    def moe(block: int, grid_name: str) -> nn.Module:
        if config.mode == "local":
            expert_class = get_expert_class(model_config.expert_class)
            pattern = grid_name + "".join(f".[0:{size}]" for size in model_config.grid)
            experts = {uid: expert_class.build(model_config.hidden_dim) for uid in expand_pattern(pattern)}
            return LocalMixtureOfExperts(
                model_config.hidden_dim, model_config.grid, grid_name, experts, model_config.k_best
            )
        return RemoteMixtureOfExperts(
            in_features=model_config.hidden_dim,
            grid_size=model_config.grid,
            uid_prefix=grid_name,
            caller=caller,
            k_best=model_config.k_best,
            k_min=config.k_min,
            backward_k_min=config.backward_k_min,
            forward_timeout=config.forward_timeout,
            timeout_after_k_min=config.timeout_after_k_min,
            backward_timeout=config.backward_timeout,
            seed=config.seed + block,
        )

    return ByteTransformerLM(model_config, moe)


def run_lm_training(
    config: LMSessionConfig,
    corpus: TextCorpus,
    metrics: MetricsStream | None = None,
    caller: Any = None,
    on_step: Callable[[int], None] | None = None,
    stop: threading.Event | None = None,
    say: Callable[[str], None] | None = None,
    on_collaborative: Callable[[CollaborativeOptimizer], None] | None = None,
) -> LMTrainResult:
    """Train per `config` (resuming from its checkpoint directory if asked); `caller` for remote mode and
    for collaborative training. `say` gets the lines for the person at the terminal (waiting for experts);
    `on_collaborative` the collaborative optimiser once it exists (the portal's reporting reads it)."""
    if config.collaborative is not None and caller is None:
        raise ValueError("collaborative training needs an ExpertCaller (the DHT)")
    model = build_lm(config, caller if config.mode == "remote" else None)
    trainer = LMTrainer(model, corpus, config.train, metrics, on_step, stop, say)
    if config.resume_from:
        path = latest_checkpoint(config.resume_from) or config.resume_from
        trainer.step = load_checkpoint(path, model, trainer.optimizer)
        logger.info("resumed from %s at step %d", path, trainer.step)
    collaborative = None
    try:
        if config.collaborative is not None:  # the same optimiser as the classifier's: model-agnostic
            collaborative = collaborate(model, trainer, caller, config.collaborative, on_collaborative)
            trainer.data_offset = int.from_bytes(caller.dht.node_id[:4], "big")  # its own windows
        start_epoch = collaborative.epoch if collaborative is not None else 0
        result = trainer.train()
        if collaborative is not None:
            record_collaboration(result, collaborative, start_epoch)
        return result
    finally:
        if collaborative is not None:
            collaborative.close()

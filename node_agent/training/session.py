"""One call that trains a model end to end: build the MoE (local or over the swarm), train, clean up.

Used by `node-agent train`, the local swarm launcher's trainer process and `benchmarks/bench_training.py`.
In `remote` mode it starts an `ExpertCaller` (a client-mode DHT node plus WebRTC pool on a background
loop) unless one is passed in, and stops what it started.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from node_agent.training.checkpoints import latest_checkpoint, load_checkpoint
from node_agent.training.collaborative import (
    CollaborativeConfig,
    CollaborativeOptimizer,
    collaborate,
    record_collaboration,
)
from node_agent.training.datasets import Dataset, load_dataset
from node_agent.training.metrics import MetricsStream
from node_agent.training.models import MoEClassifier, build_local_moe
from node_agent.training.trainer import TrainConfig, Trainer, TrainResult

__all__ = ["SessionConfig", "build_model", "run_training"]

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class SessionConfig:
    dataset: str = "digits"
    hidden_dim: int = 64
    grid: tuple[int, ...] = (4, 4)
    uid_prefix: str = "ffn"
    expert_class: str = "ffn"
    mode: Literal["remote", "local"] = "remote"
    layer: Literal["mixture", "switch"] = "mixture"
    k_best: int = 4
    k_min: int = 1
    backward_k_min: int = 1
    forward_timeout: float = 10.0
    timeout_after_k_min: float = 1.0
    backward_timeout: float = 10.0
    allow_zero_outputs: bool = False
    initial_peers: Sequence[str] = ()
    rtc_loopback_only: bool = False
    #: The trainer's DHT address (client mode) and STUN/TURN servers (`IceServer`s) for its connections.
    listen: str = "0.0.0.0:0"
    ice_servers: Sequence[Any] = ()
    resume_from: str | None = None
    seed: int = 0
    train: TrainConfig = field(default_factory=TrainConfig)
    #: Average the trainer's own gradients with the project's other trainers (needs `initial_peers`).
    collaborative: CollaborativeConfig | None = None


def build_model(config: SessionConfig, dataset: Dataset, caller: Any = None) -> MoEClassifier:
    """The classifier with a local or a decentralized MoE layer (seeded: same init for every mode)."""
    from node_agent.moe.experts import get_expert_class

    torch.manual_seed(config.seed)
    if config.mode == "local":
        expert_class = get_expert_class(config.expert_class)
        moe = build_local_moe(
            config.hidden_dim,
            config.grid,
            config.uid_prefix,
            lambda uid: expert_class.build(config.hidden_dim),
            config.k_best,
        )
    else:
        if caller is None:
            raise ValueError("remote mode needs an ExpertCaller")
        options: dict[str, Any] = dict(
            in_features=config.hidden_dim,
            grid_size=config.grid,
            uid_prefix=config.uid_prefix,
            caller=caller,
            k_min=config.k_min,
            backward_k_min=config.backward_k_min,
            forward_timeout=config.forward_timeout,
            timeout_after_k_min=config.timeout_after_k_min,
            backward_timeout=config.backward_timeout,
            seed=config.seed,
        )
        if config.layer == "switch":
            from node_agent.moe.switch import RemoteSwitchMixtureOfExperts

            moe = RemoteSwitchMixtureOfExperts(**options)
        else:
            from node_agent.moe.layer import RemoteMixtureOfExperts

            moe = RemoteMixtureOfExperts(
                k_best=config.k_best, allow_zero_outputs=config.allow_zero_outputs, **options
            )
    return MoEClassifier(dataset.num_features, dataset.num_classes, config.hidden_dim, moe)


def start_caller(
    config: SessionConfig,
    *,
    identity: Any = None,
    credential: str | None = None,
    require_initial_peer: bool = True,
) -> Any:
    """The trainer's `ExpertCaller`; a portal trainer passes its joined identity and credential, so that
    busy servers of a gated project admit it ahead of unknown peers (the credential names that key)."""
    from node_agent.moe.client import ExpertCaller
    from node_agent.rtc.config import RTCOptions

    if config.rtc_loopback_only:
        rtc = RTCOptions.for_loopback()
    else:
        rtc = RTCOptions(ice_servers=tuple(config.ice_servers), loopback=True)
    return ExpertCaller.start_caller(
        list(config.initial_peers),
        rtc_options=rtc,
        listen=config.listen,
        identity=identity,
        credential=credential,
        require_initial_peer=require_initial_peer,
    )


def run_training(
    config: SessionConfig,
    metrics: MetricsStream | None = None,
    on_step: Callable[[int], None] | None = None,
    caller: Any = None,
    stop: threading.Event | None = None,
    say: Callable[[str], None] | None = None,
    on_collaborative: Callable[[CollaborativeOptimizer], None] | None = None,
) -> TrainResult:
    """Train per `config` until its steps are done or `stop` is set; in remote mode uses `caller` or
    starts (and stops) its own. `say` gets the lines for the person at the terminal (waiting for experts);
    `on_collaborative` the collaborative optimiser once it exists (the portal's reporting reads it)."""
    dataset = load_dataset(config.dataset, seed=config.seed)
    own_caller = None
    if (config.mode == "remote" or config.collaborative is not None) and caller is None:
        caller = own_caller = start_caller(config)
    collaborative = None
    start_epoch = 0
    try:
        model = build_model(config, dataset, caller if config.mode == "remote" else None)
        trainer = Trainer(model, dataset, config.train, metrics, on_step, stop=stop, say=say)
        if config.resume_from:
            path = latest_checkpoint(config.resume_from) or config.resume_from
            trainer.step = load_checkpoint(path, model, trainer.optimizer)
            logger.info("resumed from %s at step %d", path, trainer.step)
        if config.collaborative is not None:
            collaborative = collaborate(model, trainer, caller, config.collaborative, on_collaborative)
            start_epoch = collaborative.epoch
        result = trainer.train()
        if collaborative is not None:
            record_collaboration(result, collaborative, start_epoch)
        return result
    finally:
        if collaborative is not None:
            collaborative.close()
        if own_caller is not None:
            own_caller.stop()

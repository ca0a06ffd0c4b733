"""Collaborative trainers: two trainers with batch B that average gradients train like one with batch 2B;
a newcomer loads the newest state (parameters, optimiser moments, epoch) before training."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
import torch

from node_agent.averaging.records import PROGRESS_PREFIX, Progress
from node_agent.dht import DHTNode
from node_agent.loop_thread import LoopThread
from node_agent.tensor_codec import Compression
from node_agent.training.collaborative import CollaborativeConfig
from node_agent.training.session import SessionConfig, run_training
from node_agent.training.trainer import TrainConfig, TrainResult

STEPS = 80


@pytest.fixture
def swarm() -> Iterator[tuple[LoopThread, DHTNode]]:
    thread = LoopThread("bootstrap")
    thread.start()
    node = thread.run(DHTNode.create(listen="127.0.0.1:0")).result(30)
    yield thread, node
    thread.stop(node.shutdown())


@pytest.fixture
def bootstrap(swarm: tuple[LoopThread, DHTNode]) -> str:
    return swarm[1].endpoint


def _highest_epoch(swarm: tuple[LoopThread, DHTNode], run: str) -> int:
    thread, node = swarm
    found = thread.run(node.get(f"{PROGRESS_PREFIX}{run}", latest=True)).result(10)
    return max((Progress.from_wire(item.value, item.owner).epoch for item in found.values()), default=0)


def _config(
    batch: int, seed: int, peers: list[str], run: str | None, steps: int = STEPS, wait: int = 0
) -> SessionConfig:
    collaborative = (
        CollaborativeConfig(
            run=run,
            target_batch_size=2 * batch,
            progress_period=0.05,
            progress_ttl=2.0,
            matchmaking_time=3.0,
            average_timeout=10.0,
            compression=Compression.NONE,
            wait_for_peers=wait,
            wait_timeout=30.0,
        )
        if run
        else None
    )
    return SessionConfig(
        dataset="digits",
        hidden_dim=32,
        grid=(2, 2),
        mode="local",
        initial_peers=peers,
        rtc_loopback_only=True,
        collaborative=collaborative,
        train=TrainConfig(steps=steps, batch_size=batch, eval_every=0, log_every=1000, seed=seed),
    )


def _together(configs: list[SessionConfig]) -> list[TrainResult]:
    results: list[TrainResult | None] = [None] * len(configs)

    def train(index: int) -> None:
        results[index] = run_training(configs[index])

    threads = [threading.Thread(target=train, args=(i,)) for i in range(len(configs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert all(r is not None for r in results)
    return [r for r in results if r is not None]


def test_two_collaborative_trainers_match_one_with_twice_the_batch(bootstrap):
    torch.set_num_threads(1)
    single = run_training(_config(64, 0, [], None))
    half_alone = run_training(_config(32, 0, [], None))
    pair = _together([_config(32, seed, [bootstrap], "pair", wait=1) for seed in (1, 2)])
    for result in pair:
        assert result.averaged_steps >= STEPS // 2  # they did average, most global steps together
        assert result.final_accuracy >= single.final_accuracy - 0.03
    # averaged trainers apply the same gradients: the same model, but for solo steps after one finished
    assert abs(pair[0].final_accuracy - pair[1].final_accuracy) <= 0.02
    assert single.final_accuracy >= half_alone.final_accuracy - 0.05  # sanity of the comparison


def test_newcomer_loads_the_newest_state(swarm, bootstrap):
    torch.set_num_threads(1)
    results: dict[str, TrainResult] = {}

    def veteran() -> None:
        results["veteran"] = run_training(_config(32, 3, [bootstrap], "live", steps=500))

    thread = threading.Thread(target=veteran)
    thread.start()
    deadline = time.monotonic() + 60
    while _highest_epoch(swarm, "live") < 10 and time.monotonic() < deadline:  # it trains alone a while
        time.sleep(0.1)
    newcomer = run_training(_config(32, 4, [bootstrap], "live", steps=10))
    thread.join(timeout=300)
    assert "veteran" in results
    assert newcomer.start_epoch > 0  # it began where the veteran was, not from random weights
    assert newcomer.final_accuracy >= 0.8

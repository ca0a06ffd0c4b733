"""Collaborative trainers average their parameters and optimiser statistics every few global steps (real
DHT, real WebRTC peers on 127.0.0.1): copies perturbed apart realign; a partner that vanishes mid-round
costs the survivor nothing but that round."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from torch import nn

from node_agent.averaging.averager import AveragingOptions, DecentralizedAverager
from node_agent.averaging.records import PROGRESS_PREFIX, Progress
from node_agent.dht import DHTNode
from node_agent.dht.api import owner_subkey
from node_agent.loop_thread import LoopThread
from node_agent.rtc.config import RTCOptions
from node_agent.rtc.pool import ConnectionPool
from node_agent.tensor_codec import Compression
from node_agent.training.collaborative import CollaborativeConfig, CollaborativeOptimizer
from node_agent.training.session import SessionConfig, start_caller

BATCH = 16
FEATURES = 16
CLASSES = 4
#: ~0.5 M parameters: with two Adam moments, ~1.6 M averaged values
STATE_HIDDEN = 512 * 1024 // (FEATURES + CLASSES)


@pytest.fixture
def bootstrap() -> Iterator[str]:
    thread = LoopThread("bootstrap")
    thread.start()
    node = thread.run(DHTNode.create(listen="127.0.0.1:0")).result(30)
    yield node.endpoint
    thread.stop(node.shutdown())


@dataclass
class Trainer:
    caller: Any
    model: nn.Module
    optimizer: torch.optim.Optimizer
    collab: CollaborativeOptimizer
    seed: int

    def train_until(self, epoch: int, seconds: float, after_step: Callable[[], bool] | None = None) -> None:
        """Local batches until the global epoch (or the time) is reached, or `after_step` says stop."""
        data = torch.Generator().manual_seed(self.seed)
        deadline = time.monotonic() + seconds
        while self.collab.epoch < epoch and time.monotonic() < deadline:
            x = torch.randn(BATCH, FEATURES, generator=data)
            y = torch.randint(0, CLASSES, (BATCH,), generator=data)
            nn.functional.cross_entropy(self.model(x), y).backward()
            self.collab.step(BATCH)
            if after_step is not None and after_step():
                return


def _model(hidden: int) -> nn.Module:
    torch.manual_seed(0)  # the same initial model: trainers of one run start alike
    return nn.Sequential(nn.Linear(FEATURES, hidden), nn.Tanh(), nn.Linear(hidden, CLASSES))


def _trainer(bootstrap: str, run: str, seed: int, hidden: int, every: int) -> Trainer:
    caller = start_caller(SessionConfig(initial_peers=[bootstrap], rtc_loopback_only=True))
    model = _model(hidden)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    config = CollaborativeConfig(
        run=run,
        target_batch_size=2 * BATCH,
        progress_period=0.05,
        progress_ttl=2.0,
        matchmaking_time=1.0,
        average_timeout=5.0,
        compression=Compression.NONE,  # gradients exact: any difference left comes from the state round
        average_state_every=every,
        wait_for_peers=1,
        wait_timeout=20.0,
    )
    collab = CollaborativeOptimizer(list(model.parameters()), optimizer, caller, config)
    collab.join()
    return Trainer(caller, model, optimizer, collab, seed)


def _in_threads(*jobs: Callable[[], None], timeout: float = 60.0) -> None:
    errors: list[BaseException] = []

    def run(job: Callable[[], None]) -> None:
        try:
            job()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(job,)) for job in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)
    assert not any(t.is_alive() for t in threads), "a trainer hung"
    assert not errors, errors


def _state(trainer: Trainer) -> list[torch.Tensor]:
    tensors = []
    for p in trainer.model.parameters():
        tensors.append(p.detach().clone())
        moments = trainer.optimizer.state[p]
        tensors += [moments["exp_avg"].clone(), moments["exp_avg_sq"].clone()]
    return tensors


def test_trainers_perturbed_apart_converge_after_a_state_round(bootstrap):
    torch.set_num_threads(1)
    trainers: list[Trainer] = [None, None]  # type: ignore[list-item]

    def start(i: int) -> None:
        trainers[i] = _trainer(bootstrap, "realign", seed=i, hidden=32, every=3)

    _in_threads(lambda: start(0), lambda: start(1))
    a, b = trainers
    gap: list[float] = []

    def perturb_once() -> bool:
        """At epoch 1 (Adam has moments), push b's parameters and moments away from a's."""
        if b.collab.epoch >= 1 and not gap:
            noise = torch.Generator().manual_seed(7)
            with torch.no_grad():
                for p in b.model.parameters():
                    p.add_(0.1 * torch.randn(p.shape, generator=noise))
                    b.optimizer.state[p]["exp_avg"].add_(1e-2 * torch.randn(p.shape, generator=noise))
                    b.optimizer.state[p]["exp_avg_sq"].mul_(3.0)
            gap.append(max((x - y).abs().max().item() for x, y in zip(_state(a), _state(b), strict=True)))
        return False

    try:
        # epochs 1-2: the same averaged gradients keep the gap; the step to epoch 3 starts a state round
        _in_threads(lambda: a.train_until(3, 40), lambda: b.train_until(3, 40, perturb_once))
        assert gap and gap[0] > 0.05
        assert a.collab.epoch == b.collab.epoch == 3
        assert a.collab.state_averager.in_progress and b.collab.state_averager.in_progress
        before = [_state(a), _state(b)]
        _in_threads(lambda: a.collab.state_averager.wait(10.0), lambda: b.collab.state_averager.wait(10.0))
        for x, y, old_a, old_b in zip(_state(a), _state(b), *before, strict=True):
            mean = (old_a + old_b) / 2  # equal weights
            torch.testing.assert_close(x, mean, rtol=1e-3, atol=1e-3)  # float16 on the wire
            torch.testing.assert_close(y, mean, rtol=1e-3, atol=1e-3)
        # training on: the same averaged gradients from (almost) the same state; the round at epoch 6 runs
        # in the background and is applied with the delta rule while they train
        _in_threads(lambda: a.train_until(8, 40), lambda: b.train_until(8, 40))
        _in_threads(lambda: a.collab.state_averager.wait(10.0), lambda: b.collab.state_averager.wait(10.0))
        assert a.collab.epoch == b.collab.epoch == 8
        for t in (a, b):
            assert t.collab.state_averager.rounds_completed == 2
            assert t.collab.averaging_rounds()[0] >= 2 + 4  # and gradient rounds averaged too
        for x, y in zip(_state(a), _state(b), strict=True):
            torch.testing.assert_close(x, y, rtol=1e-2, atol=2e-3)
    finally:
        for t in trainers:
            if t is not None:
                t.collab.close()
                t.caller.stop()


def test_trainer_keeps_training_when_its_state_partner_vanishes_mid_round(bootstrap):
    torch.set_num_threads(1)
    trainers: list[Trainer] = [None, None]  # type: ignore[list-item]

    def start(i: int) -> None:
        # a state big enough (~1.6 M values) that the round takes a while to move
        trainers[i] = _trainer(bootstrap, "vanish", seed=i, hidden=STATE_HIDDEN, every=2)

    _in_threads(lambda: start(0), lambda: start(1))
    survivor, victim = trainers
    vanished = threading.Event()

    def vanish_mid_round() -> bool:
        """Once the victim's state round is under way (its group formed), its whole node goes."""
        averager = victim.collab.state_averager.averager
        if not victim.collab.state_averager.in_progress or averager is None:
            return False
        deadline = time.monotonic() + 10
        while not averager._rounds and time.monotonic() < deadline:
            time.sleep(0.005)
        victim.caller.stop()
        vanished.set()
        return True

    try:
        _in_threads(lambda: survivor.train_until(6, 60), lambda: victim.train_until(6, 60, vanish_mid_round))
        assert vanished.is_set()
        state = survivor.collab.state_averager
        state.wait(10.0)
        assert survivor.collab.epoch == 6  # it went on alone
        assert state.rounds_completed + state.rounds_failed >= 1 and not state.in_progress
        assert all(torch.isfinite(t).all() for t in _state(survivor))
    finally:
        survivor.collab.close()
        survivor.caller.stop()


def test_state_partner_sending_huge_values_changes_nothing(bootstrap):
    """A partner that joins the state round with values 1000 x too large (finite, so no screening refuses
    them, and alone with us, so no outlier test applies) pulls nothing: the round fails, our state stays."""
    torch.set_num_threads(1)
    run = "hostile"
    thread = LoopThread("hostile")
    thread.start()
    shapes = [p.shape for p in _model(32).parameters()]
    huge = [1e3 * torch.randn(shape) for shape in shapes * 3]  # parameters, exp_avg, exp_avg_sq

    async def hostile_peer() -> tuple[DHTNode, ConnectionPool, DecentralizedAverager]:
        dht = await DHTNode.create(initial_peers=[bootstrap], listen="127.0.0.1:0")
        pool = await ConnectionPool.create(dht, None, RTCOptions.for_loopback(connect_timeout=5.0))
        progress = Progress(0, BATCH, 0.0, time.time(), dht.endpoint, None, BATCH)  # "a trainer at epoch 0"
        await dht.store(
            f"{PROGRESS_PREFIX}{run}",
            progress.to_wire(),
            time.time() + 30,
            owner_subkey("trainer", dht.node_id),
        )
        compressions = [Compression.FLOAT16] * (2 * len(shapes)) + [Compression.NONE] * len(shapes)
        options = AveragingOptions(target_group_size=2, matchmaking_time=3.0, compression=compressions)
        averager = await DecentralizedAverager.create(dht, pool, f"{run}-state", huge, options)
        return dht, pool, averager

    dht, pool, averager = thread.run(hostile_peer()).result(30)
    trainer = None
    try:
        trainer = _trainer(bootstrap, run, seed=0, hidden=32, every=1)
        hostile_round = thread.run(averager.step(timeout=15.0, tag="s1"))
        trainer.train_until(1, 30)  # a global step (alone: the peer never averages gradients), then a round
        state = trainer.collab.state_averager
        assert trainer.collab.epoch == 1 and state.in_progress
        before = _state(trainer)
        state.wait(15.0)
        assert state.rounds_failed == 1 and state.rounds_completed == 0
        assert all(torch.equal(x, y) for x, y in zip(_state(trainer), before, strict=True))
        assert state.averager is not None and dht.node_id in state.averager.penalties
        hostile_round.cancel()
    finally:
        if trainer is not None:
            trainer.collab.close()
            trainer.caller.stop()

        async def stop() -> None:
            await averager.shutdown()
            await pool.close()
            await dht.shutdown()

        thread.stop(stop())

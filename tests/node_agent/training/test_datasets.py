"""The dataset registry: real bundled data, deterministic stratified splits, standardised features."""

from __future__ import annotations

import pytest
import torch

from node_agent.training.datasets import available_datasets, iterate_batches, load_dataset


@pytest.mark.parametrize("name", sorted(available_datasets()))
def test_every_registered_dataset_loads(name):
    data = load_dataset(name)
    assert data.train_x.dtype == torch.float32 and data.train_y.dtype == torch.int64
    assert data.train_x.shape[1] == data.test_x.shape[1] == data.num_features
    assert set(data.test_y.tolist()) == set(range(data.num_classes))  # stratified: every class held out
    assert torch.isfinite(data.train_x).all()


def test_digits_split_is_deterministic_and_standardised():
    first, second = load_dataset("digits", seed=3), load_dataset("digits", seed=3)
    assert torch.equal(first.test_x, second.test_x)
    assert len(first.train_x) + len(first.test_x) == 1797
    assert first.num_classes == 10 and first.num_features == 64
    assert first.train_x.mean(dim=0).abs().max() < 1e-4
    assert not torch.equal(load_dataset("digits", seed=4).test_y, first.test_y)


def test_unknown_dataset_and_bad_fraction():
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset("imagenet")
    with pytest.raises(ValueError):
        load_dataset("iris", test_fraction=1.5)


def test_batches_cover_an_epoch_without_repeats():
    features = torch.arange(10.0).unsqueeze(1)
    labels = torch.arange(10)
    batches = iterate_batches(features, labels, batch_size=3, seed=1)
    seen = [int(v) for _ in range(3) for v in next(batches)[1]]
    assert len(set(seen)) == 9
    with pytest.raises(ValueError):
        next(iterate_batches(features, labels, batch_size=0))

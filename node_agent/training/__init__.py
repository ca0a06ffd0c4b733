"""Training a model that mixes local layers with decentralized Mixture-of-Experts layers.

* `datasets`: a registry of small real datasets that ship with installed packages (nothing downloaded).
* `models`: the classifier (local layers around one MoE layer) and the factories for its MoE layer.
* `metrics`: the metrics stream (`MetricsEvent`, JSON lines, in-process callbacks).
* `checkpoints`: the trainer's own parameters and optimiser state in safetensors files.
* `progress`: a dependency-free progress bar for the terminal.
* `trainer`: the training loop (`Trainer`, `TrainConfig`, `train`).
"""

from __future__ import annotations

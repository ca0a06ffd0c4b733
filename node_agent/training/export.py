"""Take the model home: gather the swarm's experts and a trainer's own layers into one safetensors file.

`gather_experts` asks every live replica of every grid cell for its step (`info`), downloads the newest
state exactly (`node_agent.averaging.state_download`, no float16) and keeps the module tensors. The file::

    experts.<uid>.<module tensor name>   every cell some replica served
    trainer.<model tensor name>          the trainer's own layers (stem, gate, norm, head), from its
                                         checkpoint (`node-agent train --checkpoint-dir`)

and in its metadata `colearn_manifest`: JSON with the project's grid, prefix, expert class, hidden size and
dataset, one entry per exported cell (`uid`, `step`, `replica` node id, `age_s`: seconds between the state's
snapshot and the export) and the `missing` cells nobody served. `evaluate_export` rebuilds the same
classifier with in-process experts (`LocalMixtureOfExperts` routes exactly as the remote layer does when
every expert answers) and measures its held-out accuracy. A language model's export (spec `task` `lm`: its
shape, `uid_prefix` the model's name) holds the cells of every block's grid `<name>.b<k>`; it is evaluated
in validation bits per byte on its corpus.

Loading never unpickles: safetensors holds tensors and strings only, and the manifest is plain JSON.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from node_agent.averaging.state_download import DownloadOptions, download_newest
from node_agent.moe.server.backend import create_backends
from node_agent.moe.server.state import MODULE_PREFIX, expert_state_schema

logger = logging.getLogger(__name__)

MANIFEST_KEY = "colearn_manifest"
EXPERTS = "experts."
TRAINER = "trainer."


class ExportError(Exception):
    """The export could not be written or read (nothing gathered, malformed file)."""


@dataclass(slots=True)
class ExportSpec:
    """What the model looks like: from the project's config or the command line."""

    grid: tuple[int, ...]
    uid_prefix: str = "ffn"
    expert_class: str = "ffn"
    hidden_dim: int = 64
    dataset: str = "digits"
    k_best: int = 4
    #: `classification` or `lm`; a language model's shape (its grids are `<uid_prefix>.b<block>`) and
    #: corpus (`python-stdlib`, `own`: the researcher's text, or "" when unknown).
    task: str = "classification"
    blocks: int = 0
    seq_len: int = 0
    window: int = 0
    heads: int = 0
    corpus: str = ""

    @classmethod
    def for_lm(cls, config: Any, corpus: str = "") -> ExportSpec:
        """The spec of a language model (`training.lm.LMConfig`)."""
        return cls(
            grid=tuple(config.grid),
            uid_prefix=config.uid_prefix,
            expert_class=config.expert_class,
            hidden_dim=config.hidden_dim,
            dataset="",
            k_best=config.k_best,
            task="lm",
            blocks=config.blocks,
            seq_len=config.seq_len,
            window=config.window,
            heads=config.heads,
            corpus=corpus,
        )

    def lm_config(self) -> Any:  # -> LMConfig
        from node_agent.training.lm import LMConfig

        return LMConfig(
            hidden_dim=self.hidden_dim,
            blocks=self.blocks,
            grid=self.grid,
            seq_len=self.seq_len,
            window=self.window,
            heads=self.heads,
            uid_prefix=self.uid_prefix,
            expert_class=self.expert_class,
            k_best=self.k_best,
        )

    def uids(self) -> list[str]:
        """Every cell the model has: its grid's, or every block's grid's for a language model."""
        from node_agent.portal.census import grid_uids, grids_uids

        if self.task != "lm":
            return grid_uids(self.uid_prefix, self.grid)
        from node_agent.training.lm import block_prefix

        return grids_uids([(block_prefix(self.uid_prefix, k), self.grid) for k in range(self.blocks)])


@dataclass(slots=True)
class CellEntry:
    uid: str
    step: int
    replica: str
    age_s: float


@dataclass(slots=True)
class Manifest:
    spec: ExportSpec
    cells: list[CellEntry] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    trainer_step: int | None = None
    created: float = field(default_factory=time.time)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        data = json.loads(text)
        spec = data["spec"]
        spec["grid"] = tuple(int(n) for n in spec["grid"])
        return cls(
            spec=ExportSpec(**spec),
            cells=[CellEntry(**cell) for cell in data.get("cells", [])],
            missing=[str(uid) for uid in data.get("missing", [])],
            trainer_step=data.get("trainer_step"),
            created=float(data.get("created", 0.0)),
        )


async def gather_experts(
    sync: Any, spec: ExportSpec, uids: list[str]
) -> tuple[dict[str, torch.Tensor], list[CellEntry], list[str]]:
    """Download each uid's newest live state through `sync` (a `ReplicaSync`-like object with
    `other_replicas` and `donors`); returns the tensors, the cell entries and the uids nobody served."""
    templates = create_backends(uids[:1], spec.expert_class, spec.hidden_dim)
    schema = expert_state_schema(next(iter(templates.values())))  # every cell has the same architecture
    replicas = await sync.other_replicas(uids)
    tensors: dict[str, torch.Tensor] = {}
    cells: list[CellEntry] = []
    missing: list[str] = []

    async def one(uid: str) -> None:
        donors = await sync.donors(replicas.get(uid, []))
        options = DownloadOptions(compression="none")
        got = await download_newest(donors, uid, schema, options) if donors else None
        if got is None:
            missing.append(uid)
            return
        for name, value in got.tensors.items():
            if name.startswith(MODULE_PREFIX):
                tensors[f"{EXPERTS}{uid}.{name.removeprefix(MODULE_PREFIX)}"] = value.contiguous()
        cells.append(CellEntry(uid, got.step, got.donor, round(time.time() - started, 3)))

    started = time.time()
    for batch in range(0, len(uids), 4):  # a few cells at a time: donors cap concurrent downloads
        await asyncio.gather(*(one(uid) for uid in uids[batch : batch + 4]))
    cells.sort(key=lambda c: c.uid)
    return tensors, cells, sorted(missing)


def trainer_tensors(checkpoint: str | Path) -> tuple[dict[str, torch.Tensor], int]:
    """The trainer's own layers from its checkpoint file or directory (latest `step-*.safetensors`)."""
    from node_agent.training.checkpoints import latest_checkpoint

    path = Path(checkpoint)
    if path.is_dir():
        found = latest_checkpoint(path)
        if found is None:
            raise ExportError(f"no trainer checkpoint in {path}")
        path = found
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
    loaded = load_file(str(path))
    own = {TRAINER + k.removeprefix("model."): v for k, v in loaded.items() if k.startswith("model.")}
    return own, int(metadata.get("step", 0))


def write_export(path: str | Path, tensors: dict[str, torch.Tensor], manifest: Manifest) -> Path:
    """Atomically write the file (temporary name, then rename)."""
    if not tensors:
        raise ExportError("nothing to export: no expert answered and no trainer checkpoint was given")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata={MANIFEST_KEY: manifest.to_json()})
    os.replace(tmp, path)
    return path


def read_export(path: str | Path) -> tuple[dict[str, torch.Tensor], Manifest]:
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        tensors = load_file(str(path))
        return tensors, Manifest.from_json(metadata[MANIFEST_KEY])
    except (OSError, KeyError, ValueError, TypeError, json.JSONDecodeError) as exc:
        raise ExportError(f"{path} is not a Colearn export: {exc}") from exc


def read_manifest(path: str | Path) -> Manifest:
    """Only the manifest (what the file holds), without loading its tensors."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        return Manifest.from_json(metadata[MANIFEST_KEY])
    except (OSError, KeyError, ValueError, TypeError, json.JSONDecodeError) as exc:
        raise ExportError(f"{path} is not a Colearn export: {exc}") from exc


def export_fallback(path: str | Path):  # -> moe.server.replicas.Fallback
    """A takeover's fallback when no replica is live: a cell's module tensors and step from an export file
    (no optimiser moments: those start fresh). Read once, when the first cell asks."""
    cache: dict[str, Any] = {}

    async def fallback(uid: str) -> tuple[dict[str, torch.Tensor], int] | None:
        if "tensors" not in cache:
            cache["tensors"], cache["manifest"] = await asyncio.to_thread(read_export, path)
        tensors, manifest = cache["tensors"], cache["manifest"]
        cell = next((c for c in manifest.cells if c.uid == uid), None)
        if cell is None:
            return None
        prefix = f"{EXPERTS}{uid}."
        state = {
            MODULE_PREFIX + k.removeprefix(prefix): v for k, v in tensors.items() if k.startswith(prefix)
        }
        return state, cell.step

    return fallback


def _exported_experts(tensors: dict[str, torch.Tensor], manifest: Manifest) -> dict[str, torch.nn.Module]:
    """Every exported cell as an in-process expert module."""
    from node_agent.moe.experts import get_expert_class

    spec = manifest.spec
    expert_class = get_expert_class(spec.expert_class)
    experts: dict[str, torch.nn.Module] = {}
    for cell in manifest.cells:
        module = expert_class.build(spec.hidden_dim)
        prefix = f"{EXPERTS}{cell.uid}."
        state = {k.removeprefix(prefix): v for k, v in tensors.items() if k.startswith(prefix)}
        try:
            module.load_state_dict(state)
        except RuntimeError as exc:
            raise ExportError(f"{cell.uid}: tensors do not fit a {spec.expert_class} expert: {exc}") from exc
        experts[cell.uid] = module
    if not experts:
        raise ExportError("the export holds no expert")
    return experts


def _load_trainer_layers(model: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """The trainer's own layers into `model` (whose in-process experts came from the export)."""
    own = {k.removeprefix(TRAINER): v for k, v in tensors.items() if k.startswith(TRAINER)}
    if not own:
        logger.warning("the export holds no trainer layers: the trainer's own layers are untrained")
        return
    try:
        missing, unexpected = model.load_state_dict(own, strict=False)
    except RuntimeError as exc:  # a tensor of the wrong shape
        raise ExportError(f"trainer tensors do not fit the model: {exc}") from exc
    bad = [k for k in missing if "moe.experts." not in k]
    if bad or unexpected:
        raise ExportError(f"trainer tensors do not fit the model: missing {bad[:3]}, extra {unexpected[:3]}")


def build_exported_model(path: str | Path, seed: int = 0) -> tuple[torch.nn.Module, Manifest, Any]:
    """The classifier with in-process experts loaded from an export, and the dataset (split by `seed`,
    as the trainer's was). Missing cells are left out of the mixture, as a swarm masks dead experts."""
    from node_agent.moe.layer import LocalMixtureOfExperts
    from node_agent.training.datasets import load_dataset
    from node_agent.training.models import MoEClassifier

    tensors, manifest = read_export(path)
    spec = manifest.spec
    if spec.task == "lm":
        raise ExportError(f"{path} holds a language model: use build_exported_lm")
    experts = _exported_experts(tensors, manifest)
    dataset = load_dataset(spec.dataset, seed=seed)
    moe = LocalMixtureOfExperts(spec.hidden_dim, spec.grid, spec.uid_prefix, experts, spec.k_best)
    model = MoEClassifier(dataset.num_features, dataset.num_classes, spec.hidden_dim, moe)
    _load_trainer_layers(model, tensors)
    return model, manifest, dataset


#: A language model's shape an export may name (`project_config.LMSpec`'s and `ExpertSpec`'s bounds): a
#: hostile manifest must not make the reader allocate without bound.
LM_LIMITS = {
    "blocks": (1, 64),
    "seq_len": (1, 4096),
    "window": (1, 4096),
    "heads": (1, 64),
    "hidden_dim": (1, 65536),
    "k_best": (1, 4096),
}


def build_exported_lm(path: str | Path) -> tuple[torch.nn.Module, Manifest]:
    """The language model with in-process experts of every block from an export (missing cells left out,
    as a swarm masks dead experts) and the trainer's own layers."""
    from node_agent.moe.layer import LocalMixtureOfExperts
    from node_agent.moe.uids import parse_uid
    from node_agent.training.lm import ByteTransformerLM

    tensors, manifest = read_export(path)
    spec = manifest.spec
    if spec.task != "lm":
        raise ExportError(f"{path} holds a {spec.task} model, not a language model")
    for name, (low, high) in LM_LIMITS.items():
        value = getattr(spec, name)
        if not isinstance(value, int) or not low <= value <= high:
            raise ExportError(f"{path}: the language model's {name} {value!r} is not in {low}..{high}")
    try:
        config = spec.lm_config()
    except (ValueError, TypeError) as exc:
        raise ExportError(f"{path}: bad language-model shape: {exc}") from exc
    experts = _exported_experts(tensors, manifest)

    def moe(block: int, grid_name: str) -> torch.nn.Module:
        own = {uid: module for uid, module in experts.items() if parse_uid(uid)[0] == grid_name}
        if not own:
            raise ExportError(f"the export holds no expert of block {block} ({grid_name})")
        return LocalMixtureOfExperts(config.hidden_dim, config.grid, grid_name, own, config.k_best)

    try:
        model = ByteTransformerLM(config, moe)
    except ValueError as exc:  # a cell uid of the manifest that is not a grid uid
        raise ExportError(f"{path}: {exc}") from exc
    _load_trainer_layers(model, tensors)
    return model, manifest


def evaluate_lm_export(path: str | Path, text: str | None = None, corpus_bytes: int | None = None) -> dict:
    """Validation bits per byte and next-byte accuracy of a language-model export, on the built-in corpus
    or `text` (required for a project trained on its researcher's own text)."""
    from node_agent.training.lm_trainer import LMTrainConfig, LMTrainer
    from node_agent.training.metrics import bits_per_byte
    from node_agent.training.text import load_corpus

    model, manifest = build_exported_lm(path)
    if manifest.spec.corpus == "own" and not text:
        raise ExportError("this model was trained on its researcher's own text: give it with --text PATH")
    corpus = load_corpus(text, corpus_bytes)
    loss, accuracy = LMTrainer(model, corpus, LMTrainConfig()).evaluate()
    return {
        "corpus": corpus.name,
        "val_bpb": round(bits_per_byte(loss), 4),
        "accuracy": round(accuracy, 4),
        "experts": len(manifest.cells),
        "missing": manifest.missing,
        "trainer_step": manifest.trainer_step,
    }


def evaluate_export(path: str | Path, seed: int = 0) -> dict[str, Any]:
    """Held-out accuracy and loss of an export, on the dataset named in its manifest."""
    model, manifest, dataset = build_exported_model(path, seed)
    model.eval()
    with torch.no_grad():
        logits = model(dataset.test_x)
        loss = float(torch.nn.functional.cross_entropy(logits, dataset.test_y))
        accuracy = float((logits.argmax(dim=1) == dataset.test_y).float().mean())
    return {
        "dataset": manifest.spec.dataset,
        "accuracy": round(accuracy, 4),
        "loss": round(loss, 4),
        "experts": len(manifest.cells),
        "missing": manifest.missing,
        "trainer_step": manifest.trainer_step,
    }

"""The byte-level LM: tokenizer, corpora and `--text` errors, local training, and the same model with its
experts on real expert servers (same logits and gradients as in-process)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from node_agent.training.lm import LMConfig, block_uid_patterns, grid_parameters
from node_agent.training.lm_session import LMSessionConfig, run_lm_training
from node_agent.training.lm_trainer import LMTrainConfig
from node_agent.training.text import (
    TextDataError,
    builtin_corpus,
    decode,
    decode_bytes,
    encode,
    load_text,
    unigram_bpb,
)

TINY = LMConfig(hidden_dim=16, blocks=2, grid=(2, 2), seq_len=16, window=8, heads=2, k_best=2)


@given(st.binary(max_size=512))
def test_byte_tokenizer_round_trips_arbitrary_bytes(data: bytes):
    tokens = encode(data)
    assert tokens.dtype == torch.long and len(tokens) == len(data)
    assert decode_bytes(tokens) == data


@given(st.text(max_size=200))
def test_text_round_trips(text: str):
    assert decode(encode(text)) == text


def test_builtin_corpus_is_split_by_file_deterministically():
    first = builtin_corpus(max_bytes=200_000)
    second = builtin_corpus(max_bytes=200_000)
    assert torch.equal(first.train, second.train) and torch.equal(first.validation, second.validation)
    assert first.train_files > 0 and first.validation_files > 0
    assert 3.0 < unigram_bpb(first.train, first.validation) < 8.0


def test_text_rejects_missing_empty_and_binary(tmp_path: Path):
    with pytest.raises(TextDataError, match="no such file or folder"):
        load_text(tmp_path / "nope")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(TextDataError, match="holds no files"):
        load_text(empty)
    (empty / "a.txt").write_text("hello " * 100)
    (empty / "b.bin").write_bytes(b"\x89PNG\x00\x01\x02" * 10)
    with pytest.raises(TextDataError, match=r"b\.bin looks binary"):
        load_text(empty)
    latin = tmp_path / "latin1.txt"
    latin.write_bytes("caf\xe9 ".encode("latin-1") * 10)
    with pytest.raises(TextDataError, match="not UTF-8"):
        load_text(latin)
    pair = tmp_path / "pair"
    pair.mkdir()
    (pair / "one.txt").write_text("first file\n" * 10)
    (pair / "two.txt").write_text("second file\n" * 10)
    two = load_text(pair)
    assert two.train_files == two.validation_files == 1
    own = tmp_path / "own.txt"
    own.write_text("the quick brown fox jumps over the lazy dog\n" * 20)
    corpus = load_text(own)
    assert len(corpus.train) + len(corpus.validation) == own.stat().st_size


def test_lm_trains_locally_below_the_unigram_baseline():
    corpus = builtin_corpus(max_bytes=100_000)
    config = LMSessionConfig(
        model=LMConfig(hidden_dim=32, blocks=2, grid=(2, 2), seq_len=32, window=16, heads=2, k_best=2),
        mode="local",
        train=LMTrainConfig(steps=60, batch_size=16, learning_rate=1e-2, eval_every=0, eval_windows=32),
    )
    result = run_lm_training(config, corpus)
    assert result.steps == 60 and result.failed_steps == 0
    assert result.val_bpb < unigram_bpb(corpus.train, corpus.validation)


def test_grid_patterns_and_parameter_count():
    assert block_uid_patterns(LMConfig(blocks=2, grid=(4, 4))) == ["lm.b0.[0:4].[0:4]", "lm.b1.[0:4].[0:4]"]
    per_expert, total = grid_parameters(LMConfig(hidden_dim=1024, blocks=4, grid=(16, 16)))
    # The `ffn` expert is 1024 -> 4096 -> 1024 (8.4 M parameters): 4 x 16x16 of them are about 8.6 billion.
    assert per_expert == 2 * 1024 * 4096 + 4096 + 1024 + 2 * 1024
    assert total == per_expert * 4 * 256


def test_cli_trains_resumes_and_generates_locally(tmp_path: Path, capsys):
    from node_agent.cli import main

    own = tmp_path / "own"
    own.mkdir()
    for i in range(40):  # about a tenth of the files (by path hash) validate
        (own / f"f{i}.py").write_text(f"def f{i}(x):\n    return x * {i}\n" * 30)
    checkpoint = tmp_path / "ck"
    common = ["train", "--task", "lm", "--local", "--text", str(own), "--hidden-dim", "16", "--grid", "2x2"]
    common += ["--seq-len", "16", "--window", "8", "--heads", "2", "--k-best", "2", "--no-progress"]
    common += ["--uid-prefix", "lm.b0 lm.b1"]  # as `node-agent swarm --train` passes its grids
    common += ["--eval-every", "0", "--batch-size", "4", "--checkpoint-dir", str(checkpoint)]
    assert main([*common, "--steps", "3"]) == 0
    assert main([*common, "--steps", "5", "--resume"]) == 0
    summary = capsys.readouterr().out.strip().splitlines()[-1]
    assert '"steps": 5' in summary and "val_bpb" in summary
    assert main(["generate", "--checkpoint", str(checkpoint), "--prompt", "def ", "--length", "20"]) == 0
    assert capsys.readouterr().out.startswith("def ")
    assert main(["train", "--task", "lm", "--local", "--text", str(tmp_path / "missing")]) == 2
    assert "no such file or folder" in capsys.readouterr().err
    (checkpoint / "lm.json").write_text('{"hidden_dim": 32, "blocks": 2, "grid": [2, 2], "seq_len": 16}')
    assert main(["generate", "--checkpoint", str(checkpoint)]) == 1  # shapes that do not fit the file
    (checkpoint / "lm.json").write_text("not json")
    assert main(["generate", "--checkpoint", str(checkpoint)]) == 2
    assert "not a language-model checkpoint" in capsys.readouterr().err


def _export_local_lm(model, path: Path, spec) -> None:
    """Write `model` (in-process experts) as `node-agent export` does: experts by uid, the rest as trainer."""
    from node_agent.training.export import EXPERTS, TRAINER, CellEntry, Manifest, write_export

    tensors, cells = {}, []
    for block in model.blocks:
        for uid, expert in zip(block.moe.uids, block.moe.experts, strict=True):
            tensors.update({f"{EXPERTS}{uid}.{k}": v for k, v in expert.state_dict().items()})
            cells.append(CellEntry(uid, 7, "ab", 0.0))
    own = {k: v for k, v in model.state_dict().items() if ".moe.experts." not in k}
    tensors.update({TRAINER + k: v for k, v in own.items()})
    write_export(path, {k: v.contiguous() for k, v in tensors.items()}, Manifest(spec=spec, cells=cells))


def test_a_language_model_export_rebuilds_the_same_model_and_refuses_hostile_shapes(tmp_path: Path, capsys):
    import dataclasses

    from node_agent.cli import main
    from node_agent.training.export import ExportError, ExportSpec, build_exported_lm, evaluate_lm_export
    from node_agent.training.lm_session import build_lm

    model = build_lm(LMSessionConfig(model=TINY, mode="local", seed=3))
    path = tmp_path / "lm.safetensors"
    _export_local_lm(model, path, ExportSpec.for_lm(TINY, "python-stdlib"))
    rebuilt, manifest = build_exported_lm(path)
    tokens = torch.randint(0, 256, (2, TINY.seq_len))
    model.eval()
    rebuilt.eval()
    assert torch.equal(model(tokens), rebuilt(tokens))  # every block's experts and the trainer's layers
    assert len(manifest.cells) == 8 and manifest.spec.uids() == sorted(c.uid for c in manifest.cells)
    result = evaluate_lm_export(path, corpus_bytes=50_000)
    assert 7.0 < result["val_bpb"] < 9.0 and result["experts"] == 8  # untrained: about 8 bits a byte
    capsys.readouterr()
    assert main(["generate", "--export", str(path), "--prompt", "def ", "--length", "10"]) == 0
    assert capsys.readouterr().out.startswith("def ")  # no swarm, no checkpoint: the file alone
    _export_local_lm(model, path, ExportSpec.for_lm(TINY, "own"))
    with pytest.raises(ExportError, match="own text: give it with --text"):
        evaluate_lm_export(path)
    for hostile in ({"seq_len": 10**9}, {"blocks": 0}, {"heads": "4"}, {"hidden_dim": 2**20}):
        _export_local_lm(model, path, dataclasses.replace(ExportSpec.for_lm(TINY), **hostile))
        with pytest.raises(ExportError, match="is not in"):
            build_exported_lm(path)
    assert main(["generate", "--export", str(path)]) == 1
    assert "is not in 1..65536" in capsys.readouterr().err
    _export_local_lm(model, path, dataclasses.replace(ExportSpec.for_lm(TINY), blocks=3))
    with pytest.raises(ExportError, match="no expert of block 2"):
        build_exported_lm(path)

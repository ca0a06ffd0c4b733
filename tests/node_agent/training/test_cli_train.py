"""`node-agent train` in-process: argument errors, a local run with checkpoints, resuming from them."""

from __future__ import annotations

import json

from node_agent.cli import main


def test_train_needs_peers_unless_local(capsys):
    assert main(["train", "--steps", "1"]) == 2
    assert "--initial-peers is required" in capsys.readouterr().err
    assert main(["train", "--local", "--grid", "0x2"]) == 2


def test_local_run_checkpoints_and_resumes(tmp_path, capsys):
    common = ["train", "--local", "--hidden-dim", "16", "--grid", "2x2", "--k-best", "2", "--no-progress"]
    common += [
        "--eval-every",
        "0",
        "--checkpoint-dir",
        str(tmp_path),
        "--metrics-file",
        str(tmp_path / "m.jsonl"),
    ]
    assert main([*common, "--steps", "10"]) == 0
    first = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert first["steps"] == 10 and 0.0 <= first["accuracy"] <= 1.0
    assert main([*common, "--steps", "15", "--resume"]) == 0
    second = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert second["steps"] == 15
    assert sorted(p.name for p in tmp_path.glob("*.safetensors")) == [
        "step-00000010.safetensors",
        "step-00000015.safetensors",
    ]
    steps = [json.loads(line)["step"] for line in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert steps == [10, 10, 15, 15]  # train + eval events of each run, appended

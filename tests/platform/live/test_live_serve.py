"""live.serve: Daphne's own event loop (the one Twisted runs on) is a uvloop one."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

PLATFORM = Path(__file__).resolve().parents[3] / "platform"


def test_daphne_imported_after_use_uvloop_runs_twisted_on_uvloop() -> None:
    pytest.importorskip("uvloop")
    probe = (
        "import live.serve as serve; assert serve.use_uvloop(); "
        "import daphne.server, twisted.internet.reactor as reactor; "
        "print(type(daphne.server.twisted_loop).__module__, type(reactor._asyncioEventloop).__module__)"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=PLATFORM, capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.split() == ["uvloop", "uvloop"], result.stderr


def test_serve_refuses_to_start_after_daphne_created_its_loop() -> None:
    probe = "import daphne.server, live.serve as serve; serve.main()"
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=PLATFORM, capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0 and "before daphne.server is imported" in result.stderr

"""The node agent as a wheel the portal serves: built from this repository's `node_agent/`, with checksums.

`manage.py build_agent_wheel` (deploy time, dev setup) builds into AGENT_WHEEL_DIR and rewrites
SHA256SUMS; the Join page and project configs point agents at the newest wheel there. The build runs on a
copy of the sources in a temporary folder so it never writes build/ or *.egg-info into the checkout.
"""

from __future__ import annotations

import hashlib
import logging
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings

logger = logging.getLogger(__name__)

SUMS_FILE = "SHA256SUMS"
WHEEL_NAME_RE = re.compile(r"^colearn_node_agent-([0-9A-Za-z.+_]+)-py3-none-any\.whl$")
BUILD_TIMEOUT_S = 300


class WheelBuildError(RuntimeError):
    """pip could not build the agent wheel; the message carries pip's output."""


@dataclass(frozen=True, slots=True)
class AgentWheel:
    filename: str
    version: str
    sha256: str
    size: int
    path: Path


def wheel_dir() -> Path:
    return Path(settings.AGENT_WHEEL_DIR)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _wheel_info(path: Path) -> AgentWheel | None:
    match = WHEEL_NAME_RE.match(path.name)
    if match is None or not path.is_file():
        return None
    return AgentWheel(path.name, match.group(1), sha256_file(path), path.stat().st_size, path)


def write_checksums(directory: Path) -> str:
    """Rewrite SHA256SUMS (`sha256sum -c` format) for every agent wheel in `directory`."""
    lines = [
        f"{sha256_file(path)}  {path.name}\n"
        for path in sorted(directory.glob("*.whl"))
        if WHEEL_NAME_RE.match(path.name)
    ]
    text = "".join(lines)
    (directory / SUMS_FILE).write_text(text)
    return text


def build_agent_wheel(*, source_dir: Path | None = None, out_dir: Path | None = None) -> AgentWheel:
    """Build `colearn_node_agent-<version>-py3-none-any.whl` from the repository and record its checksum."""
    source = Path(source_dir or settings.REPO_DIR)
    target = Path(out_dir or wheel_dir())
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="colearn-wheel-") as tmp:
        work = Path(tmp) / "src"
        work.mkdir()
        shutil.copy2(source / "pyproject.toml", work / "pyproject.toml")
        readme = source / "README.md"
        if readme.is_file():
            shutil.copy2(readme, work / "README.md")
        else:
            (work / "README.md").write_text("Colearn node agent\n")
        shutil.copytree(
            source / "node_agent", work / "node_agent", ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
        )
        built = Path(tmp) / "dist"
        command = [
            sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-cache-dir",
            "--disable-pip-version-check", "-q", "-w", str(built), str(work),
        ]  # fmt: skip
        result = subprocess.run(command, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
        wheels = sorted(built.glob("*.whl")) if built.is_dir() else []
        if result.returncode != 0 or len(wheels) != 1:
            raise WheelBuildError(f"pip wheel failed ({result.returncode}): {result.stderr[-2000:]}")
        final = target / wheels[0].name
        shutil.copy2(wheels[0], final)
    write_checksums(target)
    info = _wheel_info(final)
    if info is None:
        raise WheelBuildError(f"unexpected wheel name {final.name}")
    logger.info("built agent wheel %s (sha256 %s)", info.filename, info.sha256)
    return info


def latest_wheel() -> AgentWheel | None:
    """The newest agent wheel in AGENT_WHEEL_DIR, or None before `build_agent_wheel` ran."""
    directory = wheel_dir()
    if not directory.is_dir():
        return None
    candidates = [p for p in directory.glob("*.whl") if WHEEL_NAME_RE.match(p.name)]
    if not candidates:
        return None
    return _wheel_info(max(candidates, key=lambda p: p.stat().st_mtime))


def wheel_path(filename: str) -> Path | None:
    """The served file for a requested name, only if it is a wheel we built (no path tricks)."""
    if not WHEEL_NAME_RE.match(filename):
        return None
    path = wheel_dir() / filename
    return path if path.is_file() else None

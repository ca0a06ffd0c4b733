"""The agent wheel volunteers install pins the aiortc/aioice/pyOpenSSL versions its patches need."""

from __future__ import annotations

import zipfile
from email.parser import Parser
from pathlib import Path

from node_agent.rtc.library_versions import TESTED_VERSIONS


def test_the_built_wheel_requires_exactly_the_tested_webrtc_libraries(agent_wheel_dir: Path) -> None:
    wheel = next(agent_wheel_dir.glob("*.whl"))
    with zipfile.ZipFile(wheel) as archive:
        (name,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        metadata = Parser().parsestr(archive.read(name).decode())
    requires = set(metadata.get_all("Requires-Dist") or [])
    for package, version in TESTED_VERSIONS.items():
        assert f"{package}=={version}" in requires, f"the agent wheel must pin {package}=={version}"

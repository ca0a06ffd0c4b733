"""The CLI parser must stay light: `node-agent bootstrap` and `--version` may not pay for importing torch."""

from __future__ import annotations

import subprocess
import sys


def test_building_the_cli_parser_imports_neither_torch_nor_django() -> None:
    code = (
        "import sys\n"
        "from node_agent.cli import build_parser\n"
        "build_parser()\n"
        "heavy = sorted(m for m in ('torch', 'django', 'aiortc') if m in sys.modules)\n"
        "print(','.join(heavy))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == ""


def test_version_flag_prints_the_package_version() -> None:
    from node_agent import __version__

    result = subprocess.run(
        [sys.executable, "-m", "node_agent", "--version"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0
    assert __version__ in result.stdout

from __future__ import annotations

import subprocess
import sys


def test_dht_layers_import_neither_torch_nor_django() -> None:
    code = (
        "import sys, node_agent.identity, node_agent.wire, node_agent.dht, node_agent.dht.node, "
        "node_agent.cli.bootstrap, node_agent.cli.dht\n"
        "heavy = sorted(m for m in ('torch', 'django', 'aiortc', 'numpy') if m in sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)

"""Start the real `node-agent` commands on lab hosts: bootstrap nodes, expert servers, trainers."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from tests.netlab.coturn import TurnServer
from tests.netlab.lab import Host
from tests.processes import wait_until

AGENT = [sys.executable, "-m", "node_agent"]
BOOTSTRAP_PORT = 31337


def ice_server_args(turn: TurnServer, *, user: str = "lab-node", ttl_s: int = 3600) -> list[str]:
    """`--ice-server` arguments for the lab's coturn: its STUN, and TURN with a fresh REST credential."""
    username, password = turn.credentials(user, ttl_s=ttl_s)
    return [
        "--ice-server",
        turn.stun_url,
        "--ice-server",
        f"turn:{username}:{password}@{turn.address}:{turn.port}",
    ]


def start_bootstraps(hosts: Sequence[Host], workdir: Path) -> list[str]:
    """`node-agent bootstrap` on each public host, each joining the first; returns their endpoints."""
    endpoints: list[str] = []
    for host in hosts:
        argv = [*AGENT, "bootstrap", "--ephemeral", "--listen", f"{host.address}:{BOOTSTRAP_PORT}"]
        if endpoints:
            argv += ["--initial-peers", endpoints[0]]
        with (workdir / f"bootstrap-{host.name}.log").open("wb") as log:
            process = host.popen(argv, stdout=subprocess.PIPE, stderr=log, text=True)
        assert process.stdout is not None
        line = process.stdout.readline().strip()
        if "/" not in line:
            raise RuntimeError(f"bootstrap on {host.name} did not start: {line!r}")
        endpoints.append(f"{host.address}:{BOOTSTRAP_PORT}")
    return endpoints


def start_server(
    host: Host, experts: str, peers: Sequence[str], extra: Sequence[str], log: Path, *, hidden_dim: int = 64
) -> subprocess.Popen[bytes]:
    """`node-agent -v serve` of `experts` on `host`, its output in `log`."""
    argv = [*AGENT, "-v", "serve", "--ephemeral", "--experts", experts, "--hidden-dim", str(hidden_dim),
            "--initial-peers", ",".join(peers), *extra]  # fmt: skip
    with log.open("wb") as output:
        return host.popen(argv, stdout=output, stderr=subprocess.STDOUT)


def wait_for_log(log: Path, text: str, *, process: subprocess.Popen[bytes], timeout: float) -> None:
    """Wait until `text` appears in `log` (the process must keep running); TimeoutError with the log tail."""

    def seen() -> bool:
        if process.poll() is not None:
            raise RuntimeError(
                f"{log.name}: exited {process.returncode}\n{log.read_text(errors='replace')[-3000:]}"
            )
        return text in log.read_text(errors="replace")

    try:
        wait_until(seen, timeout=timeout, interval=0.2, what=f"{text!r} in {log.name}")
    except TimeoutError as exc:
        raise TimeoutError(f"{exc}\n{log.read_text(errors='replace')[-3000:]}") from None

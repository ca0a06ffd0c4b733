"""A small swarm in the lab for reachability and relay checks: public DHT nodes, volunteers serving experts
with `node-agent serve` (behind a home router or on the public segment) and trainer probes
(`expert_probe.py`). Used by `tests/e2e/test_nat_relays.py` and `benchmarks/bench_relay.py`."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.netlab.lab import Host, NetLab

DHT_PORT = 31337


@dataclass
class Process:
    popen: subprocess.Popen[Any]
    log: Path

    def wait_for_line(self, needle: str, timeout: float) -> str:
        """The first log line containing `needle`; AssertionError with the log's tail after `timeout`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.log.read_text(errors="replace").splitlines():
                if needle in line:
                    return line
            if self.popen.poll() is not None:
                break
            time.sleep(0.2)
        tail = self.log.read_text(errors="replace")[-3000:]
        raise AssertionError(f"no {needle!r} in {self.log.name} within {timeout:.0f} s:\n{tail}")

    def rounds(self) -> list[dict[str, Any]]:
        """A probe's JSON lines so far."""
        return [json.loads(line) for line in self.log.read_text().splitlines() if line.startswith("{")]


def start(host: Host, lab: NetLab, name: str, argv: list[str]) -> Process:
    log = lab.workdir / f"{name}.log"
    popen = host.popen(
        [sys.executable, *argv], stdout=log.open("w"), stderr=subprocess.STDOUT, cwd=str(lab.workdir)
    )
    return Process(popen, log)


@dataclass
class RelaySwarm:
    lab: NetLab
    stun: str
    publics: dict[str, Host] = field(default_factory=dict)
    nodes: dict[str, Process] = field(default_factory=dict)

    @property
    def boot_peer(self) -> str:
        return f"{self.publics['boot'].address}:{DHT_PORT}"

    def start_publics(self, names: tuple[str, ...] = ("boot", "p1", "p2")) -> None:
        """DHT-only nodes on the public segment (the first is everyone's bootstrap peer)."""
        for name in names:
            host = self.lab.public_host(name)
            self.publics[name] = host
            peers = [] if name == "boot" else ["--initial-peers", self.boot_peer]
            self.nodes[name] = start(
                host, self.lab, name,
                ["-m", "node_agent", "-v", "bootstrap", "--listen", f"0.0.0.0:{DHT_PORT}", "--ephemeral",
                 *peers],
            )  # fmt: skip
            time.sleep(0.5)

    def serve(self, host: Host, name: str, experts: str) -> Process:
        self.nodes[name] = start(
            host, self.lab, name,
            ["-m", "node_agent", "-v", "serve", "--experts", experts, "--hidden-dim", "16", "--ephemeral",
             "--initial-peers", self.boot_peer, "--ice-server", self.stun, "--announce-period", "10",
             "--stats-period", "3600"],
        )  # fmt: skip
        return self.nodes[name]

    def probe(self, name: str, uid: str, duration: float, period: float = 2.0) -> Process:
        return start(
            self.lab.public_host(name), self.lab, name,
            ["-m", "tests.netlab.expert_probe", "--initial-peers", self.boot_peer, "--uid", uid,
             "--ice-server", self.stun, "--duration", str(duration), "--period", str(period)],
        )  # fmt: skip

    def public_name(self, endpoint: str) -> str:
        """Which public node listens at `host:port[/id]`."""
        host = endpoint.split("/")[0].rsplit(":", 1)[0]
        return next(name for name, h in self.publics.items() if h.address == host)

"""`LocalSwarm`: start and stop a bootstrap node, expert servers and trainers as child processes.

Each child is `python -m node_agent ...` with an ephemeral identity and loopback-only WebRTC candidates;
its stdout/stderr lines are streamed with a `[name]` prefix. A server is ready once it prints its
`host:port/<node id>` line (after its experts are announced). `stop()` sends SIGTERM (servers withdraw
their announcements), then SIGKILL after a grace period; `kill_server()` simulates a volunteer vanishing.
"""

from __future__ import annotations

import collections
import logging
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from node_agent.swarm.plan import split_grid

__all__ = ["LocalSwarm", "ManagedProcess", "SwarmConfig", "SwarmError"]

logger = logging.getLogger(__name__)

_ADDRESS_LINE = re.compile(r"^(\S+:\d+)/([0-9a-f]{40})\s*$")


class SwarmError(RuntimeError):
    """A swarm process failed to start or exited early."""


@dataclass(slots=True)
class SwarmConfig:
    servers: int = 4
    grid: tuple[int, ...] = (4, 4)
    uid_prefix: str = "ffn"
    expert_class: str = "ffn"
    hidden_dim: int = 64
    replicas: int = 1
    optimizer: str = "adam"
    lr: float = 3e-3
    announce_ttl: float = 30.0
    announce_period: float = 10.0
    max_wait: float = 0.002
    seed: int = 0
    startup_timeout: float = 120.0
    verbose: bool = True
    extra_serve_args: Sequence[str] = field(default_factory=tuple)


Output = Callable[[str], None]


def _print_line(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


class ManagedProcess:
    """One child process whose output is streamed with a prefix and whose address line is captured."""

    def __init__(self, name: str, argv: list[str], output: Output | None, keep_lines: int = 200):
        self.name = name
        self.argv = argv
        self.output = output
        self.lines: collections.deque[str] = collections.deque(maxlen=keep_lines)
        self.address: str | None = None
        self.node_id: str | None = None
        self._ready = threading.Event()
        self.process = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            bufsize=1,
        )
        self._reader = threading.Thread(target=self._read, name=f"swarm-log-{name}", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for raw in self.process.stdout:
            line = raw.rstrip("\n")
            self.lines.append(line)
            if self.address is None and (match := _ADDRESS_LINE.match(line)):
                self.address, self.node_id = match.group(1), match.group(2)
                self._ready.set()
            if self.output is not None:
                self.output(f"[{self.name}] {line}")
        self._ready.set()  # exited: wake anyone waiting for the address

    def wait_ready(self, timeout: float) -> str:
        """Wait for the `host:port/<id>` line; raise SwarmError if the process exits or times out first."""
        if not self._ready.wait(timeout) or self.address is None:
            tail = "\n".join(list(self.lines)[-15:])
            code = self.process.poll()
            state = f"exited with {code}" if code is not None else "timed out"
            raise SwarmError(f"{self.name} {state} before printing its address; last output:\n{tail}")
        return self.address

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def signal(self, signum: int) -> None:
        if self.running:
            self.process.send_signal(signum)

    def wait(self, timeout: float | None = None) -> int | None:
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        self._reader.join(timeout=5)
        return code


class LocalSwarm:
    """A swarm on this machine. Use as a context manager, or call `start()` and `stop()`.

    >>> with LocalSwarm(SwarmConfig(servers=2, grid=(2, 2), hidden_dim=32)) as swarm:
    ...     run_training(SessionConfig(initial_peers=[swarm.initial_peer], grid=(2, 2), ...))
    """

    def __init__(
        self, config: SwarmConfig, output: Output | None = _print_line, python: str = sys.executable
    ):
        self.config = config
        self.output = output
        self.python = python
        self.bootstrap: ManagedProcess | None = None
        self.servers: list[ManagedProcess] = []
        self.trainers: list[ManagedProcess] = []
        # Several space-separated prefixes (`lm.b0 lm.b1`: one grid per LM block): each server gets its
        # share of every grid.
        shares = [
            split_grid(prefix, config.grid, config.servers, config.replicas)
            for prefix in config.uid_prefix.split()
        ]
        self.patterns = [" ".join(parts) for parts in zip(*shares, strict=True)]

    # ---- processes ---------------------------------------------------------------------------------
    def _node_agent(self, *args: str) -> list[str]:
        return [self.python, "-m", "node_agent", *(["-v"] if self.config.verbose else []), *args]

    @property
    def initial_peer(self) -> str:
        if self.bootstrap is None or self.bootstrap.address is None:
            raise SwarmError("the swarm is not started")
        return self.bootstrap.address

    def start(self) -> LocalSwarm:
        """Start the bootstrap node, then all servers in parallel; return once every server announced."""
        config = self.config
        try:
            self.bootstrap = ManagedProcess(
                "bootstrap",
                self._node_agent("bootstrap", "--listen", "127.0.0.1:0", "--ephemeral"),
                self.output,
            )
            self.bootstrap.wait_ready(config.startup_timeout)
            for index in range(config.servers):
                self.start_server(index, wait=False)
            deadline = time.monotonic() + config.startup_timeout
            for server in self.servers:
                server.wait_ready(max(1.0, deadline - time.monotonic()))
        except BaseException:
            self.stop()
            raise
        logger.info("swarm up: bootstrap %s, %d servers", self.initial_peer, len(self.servers))
        return self

    def start_server(self, index: int, wait: bool = True) -> ManagedProcess:
        """(Re)start server `index` with its share of the grid."""
        config = self.config
        argv = self._node_agent(
            "serve",
            "--experts",
            self.patterns[index],
            "--expert-class",
            config.expert_class,
            "--hidden-dim",
            str(config.hidden_dim),
            "--initial-peers",
            self.initial_peer,
            "--listen",
            "127.0.0.1:0",
            "--ephemeral",
            "--rtc-loopback-only",
            "--optimizer",
            config.optimizer,
            "--lr",
            str(config.lr),
            "--seed",
            str(config.seed + 1000 * index),
            "--announce-ttl",
            str(config.announce_ttl),
            "--announce-period",
            str(config.announce_period),
            "--max-wait",
            str(config.max_wait),
            *config.extra_serve_args,
        )
        server = ManagedProcess(f"server-{index}", argv, self.output)
        if index < len(self.servers):
            self.servers[index] = server
        else:
            self.servers.append(server)
        if wait:
            server.wait_ready(config.startup_timeout)
        return server

    def start_trainer(self, *train_args: str, name: str = "trainer") -> ManagedProcess:
        """Run `node-agent train` against this swarm (grid and hidden size filled in unless given)."""
        config = self.config
        args = list(train_args)
        defaults = {
            "--grid": "x".join(map(str, config.grid)),
            "--uid-prefix": config.uid_prefix,
            "--hidden-dim": str(config.hidden_dim),
        }
        for flag, value in defaults.items():
            if flag not in args:
                args += [flag, value]
        argv = self._node_agent(
            "train", "--initial-peers", self.initial_peer, "--rtc-loopback-only", "--no-progress", *args
        )
        trainer = ManagedProcess(name, argv, self.output)
        self.trainers.append(trainer)
        return trainer

    def kill_server(self, index: int, signum: int = signal.SIGKILL) -> None:
        """A volunteer vanishes: SIGKILL by default (no goodbye; announcements linger until they expire)."""
        server = self.servers[index]
        server.signal(signum)
        server.wait(10.0)
        logger.info("server-%d stopped with signal %d", index, signum)

    def stop(self, grace: float = 15.0) -> None:
        """SIGTERM everyone (trainers and servers first, bootstrap last), SIGKILL whoever lingers."""
        groups = [self.trainers, self.servers, [self.bootstrap] if self.bootstrap else []]
        for group in groups:
            for process in group:
                process.signal(signal.SIGTERM)
            deadline = time.monotonic() + grace
            for process in group:
                if process.wait(max(0.1, deadline - time.monotonic())) is None:
                    logger.warning("%s ignored SIGTERM; killing it", process.name)
                    process.signal(signal.SIGKILL)
                    process.wait(5.0)

    def __enter__(self) -> LocalSwarm:
        return self.start() if self.bootstrap is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()

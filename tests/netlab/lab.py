"""A network lab of Linux network namespaces: a public segment, home networks behind NAT routers, coturn.

    with NetLab() as lab:
        boot = lab.public_host("boot")
        home = lab.home_network("h1", nat="cone", uplink_mbit=20, downlink_mbit=100, loss_percent=0)
        v1 = home.host("v1")
        turn = lab.start_coturn("secret")
        proc = v1.popen([sys.executable, "-m", "node_agent", ...])

Layout: one namespace holds the public segment's bridge (`br0`); every public host and every home router
has a veth port on it, with an address in `PUBLIC_NETWORK`. A home router holds a LAN bridge (`br-lan`) for
its hosts (192.168.N.0/24, default route via the router) and does NAT with nftables (`nat.py`). Uplinks are
shaped with `tc tbf` on the router's WAN port, downlinks on its LAN bridge. Veths are created directly inside
the namespaces, so nothing touches the host's own network; the namespaces reach nothing but each other.

`PUBLIC_NETWORK` is 198.18.0.0/16 (RFC 2544's range for benchmarking networks): Python's `ipaddress` calls it
private and not global, like the documentation ranges and carrier-grade NAT's 100.64.0.0/10. Code under
test must therefore decide reachability by what peers observe, never by `is_global`/`is_private` alone.

Namespace names carry a prefix with the creating process id and a random tag, so several labs can exist at
once; entering a lab sweeps the namespaces of labs whose process is gone. The lab tears down at exit, on an
exception and on SIGTERM. It needs root and `ip`, `tc`, `nft` (and `turnserver` for coturn): `require()`
says which is missing.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import threading
import types
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tests.netlab.coturn import TURN_PORT, TurnServer, coturn_config
from tests.netlab.nat import LAN, NAT_KINDS, WAN, router_ruleset
from tests.netlab.tools import stun_binding

PUBLIC_NETWORK = ipaddress.ip_network("198.18.0.0/16")
NAMESPACE_PREFIX = "colab-"
REPO_DIR = Path(__file__).resolve().parents[2]
_TOOLS = ("ip", "tc", "nft")
_COMMAND_TIMEOUT = 30


class LabUnavailable(RuntimeError):
    """The lab cannot be built here (not root, or a tool is missing); the message says why."""


def missing_requirements(*, coturn: bool = False) -> str | None:
    """Why the lab cannot run on this machine, or None when it can."""
    if os.geteuid() != 0:
        return "the network lab needs root (network namespaces, nftables, tc)"
    tools = _TOOLS + (("turnserver",) if coturn else ())
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        return f"the network lab needs {', '.join(missing)} (apt-get install iproute2 nftables coturn)"
    return None


def require(*, coturn: bool = False) -> None:
    """LabUnavailable with the reason unless the lab can run here."""
    reason = missing_requirements(coturn=coturn)
    if reason:
        raise LabUnavailable(reason)


def _run(argv: Sequence[str], *, input_text: str | None = None) -> str:
    """Run a setup command; RuntimeError with its output when it fails."""
    result = subprocess.run(
        list(argv), input=input_text, capture_output=True, text=True, timeout=_COMMAND_TIMEOUT, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({result.returncode}): {result.stderr.strip()}")
    return result.stdout


def _namespace_pids(namespace: str) -> list[int]:
    result = subprocess.run(
        ["ip", "netns", "pids", namespace],
        capture_output=True,
        text=True,
        timeout=_COMMAND_TIMEOUT,
        check=False,
    )
    return [int(pid) for pid in result.stdout.split() if pid.isdigit()]


def _delete_namespace(namespace: str) -> None:
    """Stop what still runs inside `namespace` (processes this lab started there), then delete it."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = _namespace_pids(namespace)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        if pids and sig == signal.SIGTERM:
            for _ in range(50):
                if not _namespace_pids(namespace):
                    break
                threading.Event().wait(0.1)
    subprocess.run(
        ["ip", "netns", "delete", namespace], capture_output=True, timeout=_COMMAND_TIMEOUT, check=False
    )


def sweep_stale_namespaces() -> list[str]:
    """Delete the namespaces of labs whose creating process has exited (a lab killed with SIGKILL)."""
    listed = subprocess.run(
        ["ip", "netns", "list"], capture_output=True, text=True, timeout=_COMMAND_TIMEOUT, check=False
    ).stdout
    swept = []
    for line in listed.splitlines():
        name = line.split(" ")[0]
        if not name.startswith(NAMESPACE_PREFIX):
            continue
        owner = name[len(NAMESPACE_PREFIX) :].split("-")[0]
        if owner.isdigit() and not Path(f"/proc/{owner}").exists():
            _delete_namespace(name)
            swept.append(name)
    return swept


class Host:
    """A namespace with one address: a public host, a home host or a router."""

    def __init__(self, lab: NetLab, name: str, namespace: str, address: str) -> None:
        self.lab = lab
        self.name = name
        self.namespace = namespace
        self.address = address

    def __repr__(self) -> str:
        return f"Host({self.name!r}, {self.address})"

    def command(self, argv: Sequence[str]) -> list[str]:
        """`argv` as run inside this host's namespace."""
        return ["ip", "netns", "exec", self.namespace, *argv]

    def run(
        self, argv: Sequence[str], *, check: bool = True, timeout: float = 60, **kwargs: Any
    ) -> subprocess.CompletedProcess[str]:
        """Run `argv` inside the namespace to completion (text output captured unless redirected)."""
        kwargs.setdefault("capture_output", True)
        kwargs.setdefault("env", self.lab.env())
        return subprocess.run(self.command(argv), check=check, timeout=timeout, text=True, **kwargs)

    def popen(self, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start `argv` inside the namespace; the lab stops it at teardown if the caller has not."""
        kwargs.setdefault("env", self.lab.env())
        process = subprocess.Popen(self.command(argv), **kwargs)
        self.lab.processes.append(process)
        return process


class HomeNetwork:
    """A home LAN behind a NAT router; `host()` adds a machine to it."""

    def __init__(self, lab: NetLab, name: str, index: int, nat: str, router: Host) -> None:
        self.lab = lab
        self.name = name
        self.nat = nat
        self.router = router
        self.lan = ipaddress.ip_network(f"192.168.{index}.0/24")
        self.gateway = str(self.lan[1])
        self.hosts: list[Host] = []

    @property
    def public_address(self) -> str:
        """The router's WAN address: what peers outside see as this network's address."""
        return self.router.address

    def host(self, name: str) -> Host:
        address = str(self.lan[10 + len(self.hosts)])
        namespace = self.lab.new_namespace(f"{self.name}-{name}")
        port = f"lan{len(self.hosts)}"
        self.lab.veth(namespace, "eth0", self.router.namespace, port)
        _run(["ip", "-n", self.router.namespace, "link", "set", port, "master", LAN, "up"])
        _run(["ip", "-n", namespace, "addr", "add", f"{address}/{self.lan.prefixlen}", "dev", "eth0"])
        _run(["ip", "-n", namespace, "link", "set", "eth0", "up"])
        _run(["ip", "-n", namespace, "route", "add", "default", "via", self.gateway])
        host = Host(self.lab, name, namespace, address)
        self.hosts.append(host)
        return host

    def set_loss(self, loss_percent: int) -> None:
        """From now on drop `loss_percent` % of this network's uplink packets (0 ends the loss)."""
        self.lab.load_ruleset(self.router, router_ruleset(self.nat, loss_percent=loss_percent))


class NetLab:
    """The lab; use as a context manager (see the module docstring)."""

    def __init__(self, *, workdir: Path | None = None) -> None:
        self.tag = f"{NAMESPACE_PREFIX}{os.getpid()}-{secrets.token_hex(2)}"
        self._own_workdir = workdir is None
        self.workdir = Path(tempfile.mkdtemp(prefix="netlab-")) if workdir is None else workdir
        self.namespaces: list[str] = []
        self.processes: list[subprocess.Popen[Any]] = []
        self.public_hosts: dict[str, Host] = {}
        self.homes: dict[str, HomeNetwork] = {}
        self.turn: TurnServer | None = None
        self._next_public = 10
        self._next_port = 0
        self._bridge_namespace = ""
        self._previous_sigterm: Any = None
        self._closed = False

    # -- lifecycle -------------------------------------------------------------------------------------------
    def __enter__(self) -> NetLab:
        require()
        sweep_stale_namespaces()
        if threading.current_thread() is threading.main_thread():
            self._previous_sigterm = signal.signal(signal.SIGTERM, self._on_sigterm)
        try:
            self._bridge_namespace = self.new_namespace("pub")
            _run(["ip", "-n", self._bridge_namespace, "link", "add", "br0", "type", "bridge"])
            _run(["ip", "-n", self._bridge_namespace, "link", "set", "br0", "up"])
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _on_sigterm(self, signum: int, frame: types.FrameType | None) -> None:
        self.close()
        raise SystemExit(128 + signum)

    def close(self) -> None:
        """Stop every process the lab started and delete its namespaces (safe to call twice)."""
        if self._closed:
            return
        self._closed = True
        for process in reversed(self.processes):
            if process.poll() is None:
                process.terminate()
        for process in reversed(self.processes):
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)
        for namespace in reversed(self.namespaces):
            _delete_namespace(namespace)
        if self._previous_sigterm is not None:
            signal.signal(signal.SIGTERM, self._previous_sigterm)
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    # -- building blocks -------------------------------------------------------------------------------------
    def env(self, **extra: str) -> dict[str, str]:
        """The environment for processes in the lab: the repository on PYTHONPATH, no proxies."""
        env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
        env["PYTHONPATH"] = os.pathsep.join([str(REPO_DIR), str(REPO_DIR / "platform")])
        env.update(extra)
        return env

    def new_namespace(self, name: str) -> str:
        """Create `<tag>-<name>` with loopback up and IPv6 off (the lab is IPv4 only)."""
        namespace = f"{self.tag}-{name}"
        _run(["ip", "netns", "add", namespace])
        self.namespaces.append(namespace)
        _run(["ip", "-n", namespace, "link", "set", "lo", "up"])
        for sysctl in ("net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1"):
            _run(["ip", "netns", "exec", namespace, "sysctl", "-q", "-w", sysctl])
        return namespace

    def veth(self, namespace: str, name: str, peer_namespace: str, peer_name: str) -> None:
        """A veth pair created inside `namespace` with its peer created directly inside `peer_namespace`."""
        _run(["ip", "-n", namespace, "link", "add", name, "type", "veth", "peer", "name", peer_name,
              "netns", peer_namespace])  # fmt: skip

    def _public_port(self, namespace: str, name: str) -> str:
        """Attach `namespace` to the public bridge through its interface `name`; returns its address."""
        if self._next_public >= 65000:
            raise RuntimeError("the lab's public range is full")
        address = str(PUBLIC_NETWORK[self._next_public])
        self._next_public += 1
        port = f"p{self._next_port}"
        self._next_port += 1
        self.veth(namespace, name, self._bridge_namespace, port)
        _run(["ip", "-n", self._bridge_namespace, "link", "set", port, "master", "br0", "up"])
        _run(["ip", "-n", namespace, "addr", "add", f"{address}/{PUBLIC_NETWORK.prefixlen}", "dev", name])
        _run(["ip", "-n", namespace, "link", "set", name, "up"])
        return address

    def public_host(self, name: str) -> Host:
        """A machine with a public address (portal, bootstrap node, TURN server, a volunteer with no NAT)."""
        if name in self.public_hosts:
            raise ValueError(f"public host {name!r} exists")
        namespace = self.new_namespace(name)
        address = self._public_port(namespace, "eth0")
        # "default dev eth0": every lab address is on the segment; outward_ip() finds a route to anywhere
        _run(["ip", "-n", namespace, "route", "add", "default", "dev", "eth0"])
        host = Host(self, name, namespace, address)
        self.public_hosts[name] = host
        return host

    def home_network(
        self,
        name: str,
        *,
        nat: str = "cone",
        uplink_mbit: float | None = None,
        downlink_mbit: float | None = None,
        loss_percent: int = 0,
        queue_ms: int = 100,
    ) -> HomeNetwork:
        """A home LAN behind a router doing `nat` ("cone" or "symmetric"), its uplink and downlink shaped
        with tbf when given (a router buffer of `queue_ms` at that rate), `loss_percent` % of the uplink's
        packets dropped at random."""
        if nat not in NAT_KINDS:
            raise ValueError(f"nat must be one of {NAT_KINDS}, not {nat!r}")
        if name in self.homes:
            raise ValueError(f"home network {name!r} exists")
        index = len(self.homes) + 1
        if index > 250:
            raise RuntimeError("at most 250 home networks")
        namespace = self.new_namespace(f"{name}-gw")
        address = self._public_port(namespace, WAN)
        _run(["ip", "-n", namespace, "route", "add", "default", "dev", WAN])
        router = Host(self, f"{name}-gw", namespace, address)
        home = HomeNetwork(self, name, index, nat, router)
        _run(["ip", "-n", namespace, "link", "add", LAN, "type", "bridge"])
        _run(["ip", "-n", namespace, "addr", "add", f"{home.gateway}/{home.lan.prefixlen}", "dev", LAN])
        _run(["ip", "-n", namespace, "link", "set", LAN, "up"])
        _run(["ip", "netns", "exec", namespace, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])
        self.load_ruleset(router, router_ruleset(nat, loss_percent=loss_percent))
        if uplink_mbit is not None:
            self.shape(router, WAN, uplink_mbit, queue_ms=queue_ms)
        if downlink_mbit is not None:
            self.shape(router, LAN, downlink_mbit, queue_ms=queue_ms)
        self.homes[name] = home
        return home

    def load_ruleset(self, host: Host, ruleset: str) -> None:
        """Replace the nftables ruleset inside `host`'s namespace."""
        _run(
            ["ip", "netns", "exec", host.namespace, "nft", "-f", "-"], input_text=f"flush ruleset\n{ruleset}"
        )

    def shape(self, host: Host, device: str, mbit: float, *, queue_ms: int = 100) -> None:
        """Token-bucket `device`'s egress to `mbit` Mbit/s: a burst of ~10 ms (at least 32 KiB, enough for the
        kernel's timer granularity) and a queue of at most `queue_ms`, like a home router's buffer."""
        rate_bytes = mbit * 1e6 / 8
        burst = max(32 * 1024, int(rate_bytes / 100))
        _run(["ip", "netns", "exec", host.namespace, "tc", "qdisc", "replace", "dev", device, "root", "tbf",
              "rate", f"{mbit}mbit", "burst", str(burst), "latency", f"{queue_ms}ms"])  # fmt: skip

    # -- services --------------------------------------------------------------------------------------------
    def start_coturn(self, secret: str, *, host_name: str = "turn", timeout: float = 20) -> TurnServer:
        """coturn on a public host of its own; returns once it answers a STUN binding request."""
        require(coturn=True)
        if self.turn is not None:
            raise RuntimeError("coturn already runs in this lab")
        host = self.public_host(host_name)
        workdir = self.workdir / "coturn"
        workdir.mkdir(parents=True, exist_ok=True)
        config = workdir / "turnserver.conf"
        config.write_text(
            coturn_config(host.address, secret, peer_network=str(PUBLIC_NETWORK), workdir=workdir),
            encoding="utf-8",
        )
        log = (workdir / "stdout.log").open("wb")
        process = host.popen(["turnserver", "-c", str(config)], stdout=log, stderr=subprocess.STDOUT)
        log.close()
        server = TurnServer(host.address, TURN_PORT, secret)
        deadline = timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"turnserver exited ({process.returncode}): {self.coturn_log()}")
            try:
                stun_binding(host, host.address, TURN_PORT, timeout=1)
                break
            except (RuntimeError, subprocess.CalledProcessError):  # the probe exits 1 while coturn starts
                deadline -= 1
                if deadline <= 0:
                    raise RuntimeError(f"turnserver did not answer STUN: {self.coturn_log()}") from None
        self.turn = server
        return server

    def coturn_log(self) -> str:
        path = self.workdir / "coturn" / "turnserver.log"
        candidates = [path, *sorted((self.workdir / "coturn").glob("turnserver*.log"))]
        for candidate in candidates:
            if candidate.exists():
                return candidate.read_text(errors="replace")[-4000:]
        return "(no log)"

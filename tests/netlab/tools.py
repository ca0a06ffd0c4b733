"""Run the lab's probes (`probes.py`) on lab hosts and read their JSON answers."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tests.netlab.lab import Host


def tool_argv(*args: object) -> list[str]:
    return [sys.executable, "-m", "tests.netlab.probes", *map(str, args)]


def _last_json(output: str) -> dict[str, Any]:
    lines = [line for line in output.splitlines() if line.startswith("{")]
    if not lines:
        raise RuntimeError(f"no answer from the tool: {output!r}")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def stun_binding(host: Host, server: str, port: int, *, timeout: float = 5) -> tuple[str, int]:
    """The address `server`'s STUN service observes for a fresh socket on `host`; RuntimeError if none."""
    result = _last_json(
        host.run(tool_argv("stun", server, port, "--timeout", timeout), timeout=timeout + 10).stdout
    )
    if not result.get("mapped"):
        raise RuntimeError(f"no STUN answer from {server}:{port}: {result}")
    return result["mapped"][0], int(result["mapped"][1])


def turn_allocate(host: Host, server: str, port: int, user: str, password: str) -> dict[str, Any]:
    """Try a TURN allocation from `host`: {"relayed": [ip, port]} or {"error": [code, reason]}."""
    return _last_json(host.run(tool_argv("turn-allocate", server, port, user, password), timeout=30).stdout)


def _started(host: Host, *args: object) -> subprocess.Popen[str]:
    """A probe server on `host`, returned once it says it listens."""
    process = host.popen(tool_argv(*args), stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line.startswith("{"):
        raise RuntimeError(f"probe {args} did not start: {line!r}")
    return process


def tcp_rate_mbit(sender: Host, receiver: Host, *, seconds: float = 2, port: int = 5201) -> float:
    """TCP goodput in Mbit/s from `sender` to `receiver` over `seconds`, whichever side is behind a NAT:
    the connection is always opened from `sender` to `receiver` or, when `receiver` is the one behind a
    NAT, from `receiver` to `sender`; measured where the bytes arrive."""
    receiver_home = any(receiver in home.hosts for home in receiver.lab.homes.values())
    if not receiver_home:
        sink = _started(receiver, "tcp-sink", port)
        try:
            sender.run(tool_argv("tcp-send", receiver.address, port, seconds), timeout=seconds + 30)
            assert sink.stdout is not None
            result = json.loads(sink.stdout.readline())
        finally:
            sink.kill()
            sink.wait(timeout=5)
    else:
        source = _started(sender, "tcp-source", port, seconds)
        try:
            result = _last_json(
                receiver.run(tool_argv("tcp-drain", sender.address, port), timeout=seconds + 30).stdout
            )
        finally:
            source.kill()
            source.wait(timeout=5)
    return float(result["bytes"]) * 8 / 1e6 / max(float(result["seconds"]), 1e-6)


def udp_reflector(host: Host, port: int = 4000) -> subprocess.Popen[str]:
    """`udp-reflect` running on `host` (the lab stops it at teardown)."""
    return _started(host, "udp-reflect", port)


def udp_probe(
    host: Host, targets: list[tuple[str, int]], *, listen: float = 1.5, unsolicited_from: Host | None = None
) -> dict[str, Any]:
    """From one socket on `host`: the address each target observed ("observed"), then what came back after a
    "cross" request, optionally with `unsolicited_from` also sending to the first observed mapping
    ("answers_after_cross", "unexpected")."""
    process = host.popen(tool_argv("udp-probe", *(f"{h}:{p}" for h, p in targets), "--listen", listen),
                         stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert process.stdout is not None
    try:
        first = json.loads(process.stdout.readline())
        mapping = first["observed"][0]
        if unsolicited_from is not None and mapping:
            unsolicited_from.run(tool_argv("udp-send", mapping[0], mapping[1]))
        second = json.loads(process.stdout.readline())
    finally:
        process.wait(timeout=listen + 10)
    return {**first, **second}

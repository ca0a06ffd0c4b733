"""Reachability and relayed signalling in the network lab (issue 14 points 3 and 4), real agent processes.

A volunteer behind a typical home router (cone NAT: port-restricted filtering) runs `node-agent serve`; three
DHT nodes on the public segment are its peers. The volunteer finds itself unreachable by a dial-back, reserves
two relays and announces them; a trainer on the public segment (`tests/netlab/expert_probe.py`) calls its
experts over a fresh WebRTC connection every round, the offer travelling through a relay. Killing the relay
in use leaves the experts reachable through another within 30 s. Under 1% loss on the volunteer's uplink the
experts stay reachable for `COLEARN_RELAY_SOAK_S` seconds (60 by default; the issue's 10 minutes is
`COLEARN_RELAY_SOAK_S=600`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.netlab import Host, NetLab, skip_unless_lab

pytestmark = [pytest.mark.e2e]

DHT_PORT = 31337
UID = "ffn.0.0"
SOAK_SECONDS = float(os.environ.get("COLEARN_RELAY_SOAK_S", "60"))


@pytest.fixture
def lab() -> Iterator[NetLab]:
    skip_unless_lab(coturn=True)
    with NetLab() as built:
        built.start_coturn("relay-secret")
        yield built


def start(host: Host, lab: NetLab, name: str, argv: list[str]) -> tuple[subprocess.Popen[Any], Path]:
    log = lab.workdir / f"{name}.log"
    process = host.popen(
        [sys.executable, *argv], stdout=log.open("w"), stderr=subprocess.STDOUT, cwd=str(lab.workdir)
    )
    return process, log


def wait_for_line(log: Path, needle: str, timeout: float, process: subprocess.Popen[Any]) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in log.read_text(errors="replace").splitlines():
            if needle in line:
                return line
        if process.poll() is not None:
            break
        time.sleep(0.2)
    raise AssertionError(f"no {needle!r} in {log.name} within {timeout:.0f} s:\n{log.read_text()[-3000:]}")


def probe_rounds(log: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]


def swarm(lab: NetLab, loss_percent: int = 0) -> dict[str, Any]:
    """Three public DHT nodes, a volunteer serving experts behind a cone NAT; returns who is where."""
    assert lab.turn is not None
    stun = lab.turn.stun_url
    publics = {name: lab.public_host(name) for name in ("boot", "p1", "p2")}
    processes = {}
    boot_peer = f"{publics['boot'].address}:{DHT_PORT}"
    for name, host in publics.items():
        peers = [] if name == "boot" else ["--initial-peers", boot_peer]
        processes[name] = start(
            host, lab, name,
            ["-m", "node_agent", "-v", "bootstrap", "--listen", f"0.0.0.0:{DHT_PORT}", "--ephemeral", *peers],
        )  # fmt: skip
        time.sleep(0.5)
    home = lab.home_network("home", nat="cone", loss_percent=loss_percent)
    volunteer = start(
        home.host("v"), lab, "volunteer",
        ["-m", "node_agent", "-v", "serve", "--experts", "ffn.0.[0:2]", "--hidden-dim", "16", "--ephemeral",
         "--initial-peers", boot_peer, "--ice-server", stun, "--announce-period", "10",
         "--stats-period", "3600"],
    )  # fmt: skip
    line = wait_for_line(volunteer[1], "relays now: ", 60, volunteer[0])
    relays = line.split("relays now: ", 1)[1].strip().split(", ")
    assert len(relays) == 2, line
    wait_for_line(volunteer[1], "dial-back: unreachable", 1, volunteer[0])
    return {
        "publics": publics,
        "processes": processes,
        "volunteer": volunteer,
        "relays": relays,
        "stun": stun,
    }


def start_probe(lab: NetLab, setup: dict[str, Any], duration: float) -> tuple[subprocess.Popen[Any], Path]:
    boot = setup["publics"]["boot"]
    return start(
        lab.public_host("trainer"), lab, "probe",
        ["-m", "tests.netlab.expert_probe", "--initial-peers", f"{boot.address}:{DHT_PORT}", "--uid", UID,
         "--ice-server", setup["stun"], "--duration", str(duration), "--period", "2"],
    )  # fmt: skip


def test_home_volunteer_is_reached_through_relays_and_a_killed_relay_is_replaced_within_30s(
    lab: NetLab,
) -> None:
    setup = swarm(lab)
    probe, log = start_probe(lab, setup, duration=75)
    wait_for_line(log, '"ok": true', 40, probe)
    first_ok = next(r for r in probe_rounds(log) if r["ok"])
    assert first_ok["relays"], first_ok  # reached through the relays its announcement names

    # Kill a relay the volunteer uses (one that is not the trainer's bootstrap peer if it can be helped).
    by_address = {f"{h.address}:{DHT_PORT}": name for name, h in setup["publics"].items()}
    in_use = [by_address[relay.split("/")[0]] for relay in setup["relays"]]
    victim = next((n for n in in_use if n != "boot"), in_use[0])
    victim_address = setup["publics"][victim].address
    process, _ = setup["processes"][victim]
    process.kill()
    process.wait(timeout=10)
    killed_at = next(r["t"] for r in reversed(probe_rounds(log)))

    deadline = time.monotonic() + 45
    recovered = None
    while recovered is None and time.monotonic() < deadline and probe.poll() is None:
        rounds = probe_rounds(log)
        recovered = next(
            (
                r
                for r in rounds
                if r["t"] > killed_at and r["ok"] and not any(victim_address in x for x in r["relays"])
            ),
            None,
        )
        time.sleep(0.5)
    probe.kill()
    assert recovered is not None, probe_rounds(log)
    recovery_s = recovered["t"] - killed_at
    assert recovery_s <= 30, (recovery_s, probe_rounds(log))
    wait_for_line(setup["volunteer"][1], "replacing it", 1, setup["volunteer"][0])
    print(f"relay {victim} killed; reachable again through a new relay after {recovery_s:.1f} s")


def test_experts_stay_reachable_through_relays_over_a_lossy_uplink(lab: NetLab) -> None:
    setup = swarm(lab, loss_percent=1)
    probe, log = start_probe(lab, setup, duration=SOAK_SECONDS)
    probe.wait(timeout=SOAK_SECONDS + 60)
    rounds = probe_rounds(log)
    ok = [r for r in rounds if r["ok"]]
    assert len(rounds) >= SOAK_SECONDS / 4 and all(r["relays"] for r in ok), rounds
    success = len(ok) / len(rounds)
    assert success >= 0.95, rounds
    print(f"{SOAK_SECONDS:.0f} s at 1% uplink loss: {len(ok)}/{len(rounds)} relayed rounds succeeded")

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

import os
import time
from collections.abc import Iterator

import pytest

from tests.netlab import NetLab, skip_unless_lab
from tests.netlab.relay_swarm import Process, RelaySwarm

pytestmark = [pytest.mark.e2e]

UID = "ffn.0.0"
SOAK_SECONDS = float(os.environ.get("COLEARN_RELAY_SOAK_S", "60"))


@pytest.fixture
def lab() -> Iterator[NetLab]:
    skip_unless_lab(coturn=True)
    with NetLab() as built:
        built.start_coturn("relay-secret")
        yield built


def home_volunteer(lab: NetLab, loss_percent: int = 0) -> tuple[RelaySwarm, Process, list[str]]:
    """Three public DHT nodes; a volunteer behind a cone NAT that found itself unreachable, with relays."""
    assert lab.turn is not None
    swarm = RelaySwarm(lab, lab.turn.stun_url)
    swarm.start_publics()
    home = lab.home_network("home", nat="cone", loss_percent=loss_percent)
    volunteer = swarm.serve(home.host("v"), "volunteer", "ffn.0.[0:2]")
    line = volunteer.wait_for_line("relays now: ", 60)
    relays = line.split("relays now: ", 1)[1].strip().split(", ")
    assert len(relays) == 2, line
    volunteer.wait_for_line("dial-back: unreachable", 1)
    return swarm, volunteer, relays


def test_home_volunteer_is_reached_through_relays_and_a_killed_relay_is_replaced_in_30s(lab: NetLab) -> None:
    swarm, volunteer, relays = home_volunteer(lab)
    probe = swarm.probe("trainer", UID, duration=75)
    probe.wait_for_line('"ok": true', 40)
    first_ok = next(r for r in probe.rounds() if r["ok"])
    assert first_ok["relays"], first_ok  # reached through the relays its announcement names

    # Kill a relay the volunteer uses (one that is not the trainer's bootstrap peer if it can be helped).
    in_use = [swarm.public_name(relay) for relay in relays]
    victim = next((n for n in in_use if n != "boot"), in_use[0])
    victim_address = swarm.publics[victim].address
    swarm.nodes[victim].popen.kill()
    swarm.nodes[victim].popen.wait(timeout=10)
    killed_at = probe.rounds()[-1]["t"]

    deadline = time.monotonic() + 45
    recovered = None
    while recovered is None and time.monotonic() < deadline and probe.popen.poll() is None:
        fresh = [r for r in probe.rounds() if r["t"] > killed_at and r["ok"]]
        recovered = next((r for r in fresh if not any(victim_address in x for x in r["relays"])), None)
        time.sleep(0.5)
    probe.popen.kill()
    assert recovered is not None, probe.rounds()
    recovery_s = recovered["t"] - killed_at
    assert recovery_s <= 30, (recovery_s, probe.rounds())
    volunteer.wait_for_line("replacing it", 1)
    print(f"relay {victim} killed; reachable again through a new relay after {recovery_s:.1f} s")


def test_experts_stay_reachable_through_relays_over_a_lossy_uplink(lab: NetLab) -> None:
    swarm, _volunteer, _relays = home_volunteer(lab, loss_percent=1)
    probe = swarm.probe("trainer", UID, duration=SOAK_SECONDS)
    probe.popen.wait(timeout=SOAK_SECONDS + 60)
    rounds = probe.rounds()
    ok = [r for r in rounds if r["ok"]]
    assert len(rounds) >= SOAK_SECONDS / 4 and all(r["relays"] for r in ok), rounds
    assert len(ok) / len(rounds) >= 0.95, rounds
    print(f"{SOAK_SECONDS:.0f} s at 1% uplink loss: {len(ok)}/{len(rounds)} relayed rounds succeeded")

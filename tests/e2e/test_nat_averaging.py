"""Decentralized averaging across home routers (issue 15 over issue 14's NATs), all real: DHT nodes that
find themselves unreachable keep relays and name them in their averaging declarations, join requests and
roster entries; members signal to each other through those relays, and ICE finds the server-reflexive pair
between typical home routers and TURN (the lab's coturn) for the peer behind a symmetric NAT.

* Four peers (one public, two behind cone NATs, one behind a symmetric NAT) reach the exact group mean.
* A volunteer behind a symmetric NAT taking over an expert downloads its state from the only live replica,
  itself behind a cone NAT (`node-agent serve`'s takeover, through the donor's relays).
"""

from __future__ import annotations

import json
import queue
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import torch

from tests.netlab import NetLab, skip_unless_lab
from tests.netlab.agents import ice_server_args, start_bootstraps, start_server, wait_for_log
from tests.netlab.averaging_peer import peer_tensor
from tests.netlab.lab import Host

pytestmark = [pytest.mark.e2e]

SIZE = 100_000


@pytest.fixture(scope="module")
def lab() -> Iterator[NetLab]:
    skip_unless_lab(coturn=True)
    with NetLab() as built:
        built.start_coturn("averaging-secret")
        yield built


@pytest.fixture(scope="module")
def bootstraps(lab: NetLab) -> list[str]:
    """Two public DHT nodes: everyone's initial peers and the NAT'd peers' relays."""
    return start_bootstraps([lab.public_host("boot1"), lab.public_host("boot2")], lab.workdir)


class LabAverager:
    """One `tests/netlab/averaging_peer.py` process; its JSON events are read by a thread into a queue."""

    def __init__(self, lab: NetLab, host: Host, seed: int, peers: list[str], *, behind_nat: bool) -> None:
        assert lab.turn is not None
        self.out = lab.workdir / f"averaged-{seed}.pt"
        self.log = lab.workdir / f"averager-{seed}-{host.name}.log"
        argv = [sys.executable, "-m", "tests.netlab.averaging_peer", "--seed", str(seed), "--size", str(SIZE),
                "--out", str(self.out), *ice_server_args(lab.turn, user=f"averager{seed}")]  # fmt: skip
        for peer in peers:
            argv += ["--initial-peers", peer]
        if behind_nat:  # the dial-back that finds this out is tested in test_nat_relays.py: skip its ~40 s
            argv += ["--behind-nat", "--reachability", "private"]
        with self.log.open("wb") as stderr:
            self.process = host.popen(
                argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, text=True
            )
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            try:
                self.events.put(json.loads(line))
            except ValueError:
                continue

    def event(self, kind: str, timeout: float) -> dict[str, Any]:
        try:
            event = self.events.get(timeout=timeout)
        except queue.Empty:
            tail = self.log.read_text(errors="replace")[-3000:]
            raise AssertionError(f"{self.log.name}: no {kind!r} in {timeout:.0f} s\n{tail}") from None
        assert event.get("event") == kind, event
        return event

    def say(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()


def test_peers_behind_cone_and_symmetric_nats_average_to_the_exact_mean(
    lab: NetLab, bootstraps: list[str]
) -> None:
    placements = [("public", None), ("cone1", "cone"), ("cone2", "cone"), ("sym", "symmetric")]
    peers = []
    for seed, (name, nat) in enumerate(placements):
        host = lab.public_host(name) if nat is None else lab.home_network(name, nat=nat).host("pc")
        peers.append(LabAverager(lab, host, seed, bootstraps, behind_nat=nat is not None))
    ready = [peer.event("ready", 70) for peer in peers]
    assert not ready[0]["relays"] and all(r["relays"] for r in ready[1:]), ready  # NAT'd peers keep relays
    for peer in peers:
        peer.say("go")
    done = [peer.event("done", 90) for peer in peers]
    for peer in peers:
        peer.say("quit")

    names = {d["node_id"]: name for d, (name, _) in zip(done, placements, strict=True)}
    print(json.dumps([{**d, "links": [{**link, "peer": names.get(link["peer"])} for link in d["links"]]}
                      for d in done]))  # fmt: skip
    assert all(d["complete"] and d["group_size"] == 4 for d in done), done
    assert len({tuple(d["members"]) for d in done}) == 1, "one group of all four"
    expected = torch.stack([peer_tensor(seed, SIZE) for seed in range(4)]).mean(0)
    for peer in peers:
        torch.testing.assert_close(torch.load(peer.out), expected, rtol=1e-6, atol=1e-6)

    def path(frm: str, to: str) -> bool | None:
        links = done[[n for n, _ in placements].index(frm)]["links"]
        return next(link["relayed"] for link in links if names[link["peer"]] == to)

    assert path("cone1", "cone2") is False and path("cone2", "cone1") is False  # hole punched, no TURN
    assert path("sym", "cone1") and path("sym", "cone2")  # symmetric to port-restricted: only TURN works


def test_a_volunteer_behind_a_nat_takes_over_an_expert_from_a_replica_behind_another(
    lab: NetLab, bootstraps: list[str]
) -> None:
    assert lab.turn is not None
    extra = [*ice_server_args(lab.turn), "--announce-period", "10", "--stats-period", "3600",
             "--reachability", "private"]  # fmt: skip
    donor_log = lab.workdir / "replica-donor.log"
    donor = start_server(
        lab.home_network("donor", nat="cone").host("pc"),
        "ffn.0.0",
        bootstraps,
        extra,
        donor_log,
        hidden_dim=16,
    )
    wait_for_log(donor_log, "relays now", process=donor, timeout=60)
    wait_for_log(donor_log, "serving 1 ffn experts", process=donor, timeout=60)  # after its id on stdout
    donor_id = re.search(r"^\S+:\d+/([0-9a-f]{40})$", donor_log.read_text(), re.MULTILINE)  # serve's stdout
    assert donor_id is not None
    time.sleep(3)  # the server re-announces at once when its relays change: let that store land

    newcomer_log = lab.workdir / "replica-newcomer.log"
    newcomer = start_server(
        lab.home_network("newcomer", nat="symmetric").host("pc"), "ffn.0.0", bootstraps, extra, newcomer_log,
        hidden_dim=16,
    )  # fmt: skip
    wait_for_log(newcomer_log, "ffn.0.0 starts from", process=newcomer, timeout=45)
    log = newcomer_log.read_text()
    short = donor_id.group(1)[:8]
    assert f"ffn.0.0 starts from replica {short}" in log, log[-3000:]
    # its offer reached the donor through the donor's relays; from a symmetric NAT, data goes through TURN
    assert re.search(rf"connected to {short} at \S+ \(relayed: ", log), log[-3000:]

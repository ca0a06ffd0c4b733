"""Relayed signalling in the network lab: connection set-up through a relay versus direct (root; builds it).

In the lab (`tests/netlab/`): three public DHT nodes, one volunteer behind a home router (cone NAT), which
finds itself unreachable and announces two relays, and one volunteer on the public segment (reachable, no
relays). A trainer on the public segment connects to each over a fresh WebRTC connection every `--period`
seconds (`tests/netlab/expert_probe.py`) for `--seconds`, and calls one expert. STUN from the lab's coturn.

Prints one JSON object: for `relayed` (home volunteer: the offer and answer go through a relay; ICE then finds
the direct server-reflexive path) and `direct` (public volunteer: the offer goes straight to it):
`connect_p50_s`, `connect_p99_s` (offer sent to data channel open), `rounds`, `success_rate`; and the seconds
the home volunteer took from start to having relays (`relays_ready_s`). Lab links are unshaped: the set-up
cost measured here is round trips and CPU, not Internet latency.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.netlab import NetLab, require
from tests.netlab.relay_swarm import RelaySwarm


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return round(values[0], 3)
    return round(statistics.quantiles(values, n=100, method="inclusive")[round(q * 100) - 1], 3)


def summary(rounds: list[dict]) -> dict:
    connects = [r["connect_s"] for r in rounds if r["ok"] and r.get("connect_s") is not None]
    return {
        "rounds": len(rounds),
        "success_rate": round(sum(r["ok"] for r in rounds) / len(rounds), 3) if rounds else 0.0,
        "connect_p50_s": percentile(connects, 0.5),
        "connect_p99_s": percentile(connects, 0.99),
        "through_relays": all(r["relays"] for r in rounds if r["ok"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--period", type=float, default=1.5)
    args = parser.parse_args()
    require(coturn=True)
    with NetLab() as lab:
        turn = lab.start_coturn("bench-relay-secret")
        swarm = RelaySwarm(lab, turn.stun_url)
        swarm.start_publics()
        started = time.monotonic()
        home = swarm.serve(lab.home_network("home", nat="cone").host("v"), "home-volunteer", "ffn.0.[0:2]")
        public = swarm.serve(lab.public_host("pv"), "public-volunteer", "ffn.1.[0:2]")
        home.wait_for_line("relays now: ", 90)
        relays_ready_s = time.monotonic() - started
        public.wait_for_line("dial-back: reachable", 60)
        time.sleep(3)  # the announcements with relays reach the DHT
        probes = {
            "relayed": swarm.probe("trainer-a", "ffn.0.0", args.seconds, args.period),
            "direct": swarm.probe("trainer-b", "ffn.1.0", args.seconds, args.period),
        }
        for probe in probes.values():
            probe.popen.wait(timeout=args.seconds + 90)
        result = {name: summary(probe.rounds()) for name, probe in probes.items()}
        for name, probe in probes.items():
            if not probe.rounds():
                print(f"{name} probe failed:\n{probe.log.read_text()[-3000:]}", file=sys.stderr)
    result["relayed"]["relays_ready_s"] = round(relays_ready_s, 2)
    print(json.dumps(result))


if __name__ == "__main__":
    main()

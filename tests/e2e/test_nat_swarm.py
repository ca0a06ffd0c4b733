"""The swarm across home routers (issue 14's scenarios): two volunteers in two home networks serve experts, a
trainer in a third home network trains the digits model through them. Everything is the real thing: the
`node-agent` commands, the DHT with its reachability checks and relayed signalling (the volunteers find they
are unreachable and keep the public bootstrap nodes as relays), WebRTC through nftables NAT routers, STUN and
TURN from the lab's coturn.

Behind typical home routers the trainer's connections take the direct server-reflexive pair; behind symmetric
NATs they go through TURN. Either way training reaches the accuracy of local training (within 2 points).
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator

import pytest

from tests.netlab import NetLab, skip_unless_lab
from tests.netlab.agents import AGENT, ice_server_args, start_bootstraps, start_server, wait_for_log
from tests.netlab.lab import REPO_DIR

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

STEPS = 50
TRAIN = ["--steps", str(STEPS), "--grid", "4x4", "--hidden-dim", "64", "--no-progress", "--eval-every",
         str(STEPS), "--log-every", str(STEPS), "--seed", "0"]  # fmt: skip
CONNECTED = re.compile(r"connected to (\w+) at \S+ \((direct|relayed): (\w+) \S+ -> (\w+) (\S+)\)")


@pytest.fixture(scope="module")
def local_accuracy() -> float:
    """The same model, seed and steps with in-process experts: the accuracy the swarm must reach."""
    command = [*AGENT, "train", "--local", *TRAIN]
    result = subprocess.run(command, cwd=REPO_DIR, capture_output=True, text=True, timeout=300, check=True)
    return float(json.loads(result.stdout.splitlines()[-1])["accuracy"])


@pytest.fixture
def lab() -> Iterator[NetLab]:
    skip_unless_lab(coturn=True)
    with NetLab() as built:
        yield built


@pytest.mark.parametrize(("nat", "path"), [("cone", "direct"), ("symmetric", "relayed")])
def test_a_trainer_trains_through_volunteers_in_other_home_networks(
    lab: NetLab, local_accuracy: float, nat: str, path: str
) -> None:
    turn = lab.start_coturn("swarm-secret")
    peers = start_bootstraps([lab.public_host("boot1"), lab.public_host("boot2")], lab.workdir)
    volunteers = []
    for index, experts in enumerate(["ffn.[0:2].[0:4]", "ffn.[2:4].[0:4]"]):
        home = lab.home_network(f"vol{index}", nat=nat)
        log = lab.workdir / f"volunteer{index}.log"
        process = start_server(home.host("pc"), experts, peers, ice_server_args(turn), log)
        volunteers.append((home, process, log))
    for _, process, log in volunteers:  # each finds it is unreachable and keeps relays among the public nodes
        wait_for_log(log, "relays now", process=process, timeout=60)
    trainer = lab.home_network("trainer", nat=nat).host("laptop")

    command = [*AGENT, "-v", "train", "--initial-peers", ",".join(peers), *TRAIN, *ice_server_args(turn)]
    result = trainer.run(command, timeout=400, check=False)

    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.splitlines()[-1])
    connections = CONNECTED.findall(result.stderr)
    print(json.dumps({"nat": nat, "accuracy": summary["accuracy"], "local_accuracy": local_accuracy,
                      "connections": connections}))  # fmt: skip
    assert len({peer for peer, *_ in connections}) == 2, "the trainer connected to both volunteers"
    for _peer, kind, local_type, remote_type, remote in connections:
        assert kind == path, connections
        if path == "direct":  # the far end is the volunteer's home router, as STUN showed it
            assert remote_type in ("srflx", "prflx") and local_type == "host"
            assert remote.rsplit(":", 1)[0] in {home.public_address for home, _, _ in volunteers}
        else:
            assert "relay" in (local_type, remote_type)
    assert summary["failed_steps"] == 0
    assert summary["accuracy"] >= local_accuracy - 0.02

"""The TURN service as docker/compose.yaml runs it (its exact command, with Debian's coturn) on the lab's
public segment: it answers STUN, relays for a credential the portal's issuer made for a node, and refuses that
credential once past its expiry (and a forged one)."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from node_agent.portal.ice import issue_turn_grant
from tests.netlab import NetLab, skip_unless_lab
from tests.netlab.tools import stun_binding, turn_allocate
from tests.processes import wait_until

pytestmark = [pytest.mark.e2e]

COMPOSE = Path(__file__).resolve().parents[2] / "docker" / "compose.yaml"
SECRET = "compose-turn-secret"


@pytest.fixture
def lab() -> Iterator[NetLab]:
    skip_unless_lab(coturn=True)
    with NetLab() as built:
        yield built


def compose_coturn_command() -> list[str]:
    service = yaml.safe_load(COMPOSE.read_text())["services"]["coturn"]
    script = service["command"][0].replace("$$", "$")  # compose's escape for a literal $
    return [*service["entrypoint"], script]


def test_the_compose_turn_service_grants_portal_credentials_until_they_expire(lab: NetLab) -> None:
    turn_host = lab.public_host("turn")
    env = lab.env(SECRET=SECRET, REALM="colearn", MIN_PORT="49152", MAX_PORT="49252")
    server = turn_host.popen(
        compose_coturn_command(), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    home = lab.home_network("h1", nat="symmetric")
    volunteer = home.host("v1")

    def answers() -> bool:
        assert server.poll() is None, "turnserver exited"
        try:
            stun_binding(volunteer, turn_host.address, 3478, timeout=1)
            return True
        except RuntimeError:
            return False

    wait_until(answers, timeout=20, interval=0.2, what="the compose coturn answers STUN")
    node_id = "ab" * 20
    fresh = issue_turn_grant(SECRET, node_id, now=time.time(), ttl=600)
    expired = issue_turn_grant(SECRET, node_id, now=time.time() - 700, ttl=600)
    forged = issue_turn_grant("another-secret", node_id, now=time.time(), ttl=600)

    granted = turn_allocate(volunteer, turn_host.address, 3478, fresh.username, fresh.credential)
    refused = turn_allocate(volunteer, turn_host.address, 3478, expired.username, expired.credential)
    forged_answer = turn_allocate(volunteer, turn_host.address, 3478, forged.username, forged.credential)

    assert granted["relayed"][0] == turn_host.address
    assert refused["error"][0] == 401
    assert forged_answer["error"][0] == 401

"""The network lab itself (tests/netlab/): its NATs, shaped links, loss, coturn and teardown do what the tests
built on it assume. Runs as root (CI is); skips with the reason otherwise."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.netlab import NetLab, skip_unless_lab, sweep_stale_namespaces
from tests.netlab.lab import NAMESPACE_PREFIX, REPO_DIR
from tests.netlab.tools import stun_binding, tcp_rate_mbit, turn_allocate, udp_probe, udp_reflector
from tests.processes import wait_until

pytestmark = [pytest.mark.e2e]


@pytest.fixture
def lab() -> Iterator[NetLab]:
    skip_unless_lab(coturn=True)
    with NetLab() as built:
        yield built


def lab_namespaces(tag: str) -> list[str]:
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return [line.split(" ")[0] for line in listed.splitlines() if line.startswith(tag)]


def test_cone_nat_keeps_its_mapping_and_drops_unsolicited_inbound(lab: NetLab) -> None:
    a, b, stranger = lab.public_host("a"), lab.public_host("b"), lab.public_host("c")
    udp_reflector(a)
    udp_reflector(b)
    home = lab.home_network("h1", nat="cone")
    v1 = home.host("v1")

    result = udp_probe(v1, [(a.address, 4000), (b.address, 4000)], unsolicited_from=stranger)

    first, second = result["observed"]
    assert first[0] == home.public_address
    assert first == second, "endpoint-independent mapping: one outside port for every destination"
    assert result["answers_after_cross"] == 1, "the reply from the address and port contacted gets in"
    assert result["unexpected"] == [], "another port of the same host, and another host, are filtered"


def test_symmetric_nat_maps_each_destination_to_a_new_port(lab: NetLab) -> None:
    a, b, stranger = lab.public_host("a"), lab.public_host("b"), lab.public_host("c")
    udp_reflector(a)
    udp_reflector(b)
    home = lab.home_network("h1", nat="symmetric")
    v1 = home.host("v1")

    result = udp_probe(v1, [(a.address, 4000), (b.address, 4000)], unsolicited_from=stranger)

    first, second = result["observed"]
    assert first[0] == second[0] == home.public_address
    assert first[1] != second[1], "a symmetric NAT gives each destination its own outside port"
    assert result["answers_after_cross"] == 1
    assert result["unexpected"] == []


def test_home_hosts_cannot_be_reached_unsolicited_even_on_the_router(lab: NetLab) -> None:
    home = lab.home_network("h1", nat="cone")
    v1 = home.host("v1")
    outsider = lab.public_host("out")
    # a TCP connection attempt to the router's public address and to the private address both fail
    probe = "import socket,sys; socket.create_connection((sys.argv[1], 22), timeout=1)"
    for target in (home.public_address, v1.address):
        refused = outsider.run([sys.executable, "-c", probe, target], check=False)
        assert refused.returncode != 0


def test_tbf_shapes_uplink_and_downlink_roughly_to_the_rates_set(lab: NetLab) -> None:
    server = lab.public_host("server")
    home = lab.home_network("h1", nat="cone", uplink_mbit=20, downlink_mbit=50)
    v1 = home.host("v1")

    up = tcp_rate_mbit(v1, server, seconds=2)
    down = tcp_rate_mbit(server, v1, seconds=2, port=5202)

    print(json.dumps({"uplink_set_mbit": 20, "uplink_mbit": round(up, 2), "downlink_set_mbit": 50,
                      "downlink_mbit": round(down, 2)}))  # fmt: skip
    assert 10 < up < 26
    assert 25 < down < 65


def test_random_loss_drops_about_the_share_set(lab: NetLab) -> None:
    reflector = lab.public_host("a")
    udp_reflector(reflector)
    home = lab.home_network("h1", nat="cone", loss_percent=30)
    v1 = home.host("v1")
    count = (  # sends 400 datagrams and counts the answers, reading as it goes (the socket buffer is small)
        "import socket,sys,time\n"
        "s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM); s.setblocking(False); n=0\n"
        "def drain():\n"
        "    global n\n"
        "    try:\n"
        "        while True: s.recv(2048); n+=1\n"
        "    except BlockingIOError: pass\n"
        "for _ in range(400): s.sendto(b'x',(sys.argv[1],4000)); time.sleep(0.001); drain()\n"
        "time.sleep(0.5); drain(); print(n)\n"
    )

    answered = int(v1.run([sys.executable, "-c", count, reflector.address]).stdout)
    home.set_loss(0)
    answered_without_loss = int(v1.run([sys.executable, "-c", count, reflector.address]).stdout)

    print(
        json.dumps({"loss_percent": 30, "answered_of_400": answered, "without_loss": answered_without_loss})
    )
    assert 200 < answered < 340
    assert answered_without_loss == 400


def test_coturn_answers_stun_and_turn_with_short_lived_credentials(lab: NetLab) -> None:
    turn = lab.start_coturn("lab-secret")
    home = lab.home_network("h1", nat="symmetric")
    v1 = home.host("v1")

    mapped_host, _ = stun_binding(v1, turn.address, turn.port)
    user, password = turn.credentials("node-1", ttl_s=600)
    granted = turn_allocate(v1, turn.address, turn.port, user, password)
    expired_user, expired_password = turn.credentials("node-1", ttl_s=-5)
    expired = turn_allocate(v1, turn.address, turn.port, expired_user, expired_password)
    wrong = turn_allocate(v1, turn.address, turn.port, user, "not-the-password")

    assert mapped_host == home.public_address
    assert granted["relayed"][0] == turn.address
    assert expired["error"][0] == 401
    assert wrong["error"][0] == 401


def test_teardown_removes_everything_also_on_sigterm_and_sweeps_stale_labs() -> None:
    skip_unless_lab()
    with NetLab() as lab:
        lab.home_network("h1").host("v1")
        tag = lab.tag
        assert len(lab_namespaces(tag)) == 3  # the public segment, the router, the home host
    assert lab_namespaces(tag) == []

    script = (
        "import signal,sys,time\n"
        "from tests.netlab import NetLab\n"
        "with NetLab() as lab:\n"
        "    lab.home_network('h1').host('v1').popen(['sleep','300'])\n"
        "    print(lab.tag, flush=True); time.sleep(60)\n"
    )
    child = subprocess.Popen([sys.executable, "-c", script], cwd=REPO_DIR, stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    child_tag = child.stdout.readline().strip()
    assert lab_namespaces(child_tag)
    child.send_signal(signal.SIGTERM)
    assert child.wait(timeout=30) == 128 + signal.SIGTERM
    assert lab_namespaces(child_tag) == []

    stale = f"{NAMESPACE_PREFIX}999999999-dead-pub"  # a lab whose process no longer exists
    subprocess.run(["ip", "netns", "add", stale], check=True)
    try:
        assert stale in sweep_stale_namespaces()
    finally:
        subprocess.run(["ip", "netns", "delete", stale], capture_output=True, check=False)
    wait_until(lambda: not lab_namespaces(stale), timeout=5)

"""The data path across NATs (issue 14, point 6), before any relayed signalling: real aiortc peer connections
through node_agent's connection pool, in home networks of the network lab, with STUN and TURN from the lab's
coturn and the offer/answer carried by the test harness (`tests/netlab/switchboard.py`).

ICE picks the direct server-reflexive pair between two typical home routers, falls back to the TURN relay
between two symmetric NATs (where nothing else works), and neither path sends SCTP packets larger than the
path carries: every packet fits a 1,500-byte MTU (direct pairs probe their record size, `record_probing`).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.netlab import NetLab, skip_unless_lab
from tests.netlab.coturn import TurnServer
from tests.netlab.switchboard import Switchboard

pytestmark = [pytest.mark.e2e]

#: The largest DATA chunk user data whose packet (SCTP 12 + 16, DTLS record ~29-45, UDP 8, IPv4 20 bytes of
#: headers) fits a 1,500-byte MTU; aiortc's standard chunk is 1,160 bytes, a probed one up to 16 KB (lo).
MTU_SAFE_CHUNK = 1400


@pytest.fixture(scope="module")
def lab() -> Iterator[NetLab]:
    skip_unless_lab(coturn=True)
    with NetLab() as built:
        built.start_coturn("data-path-secret")
        yield built


def ice_servers(turn: TurnServer, *, with_turn: bool = True) -> list[str]:
    user, password = turn.credentials("lab-peer", ttl_s=600)
    servers = [turn.stun_url]
    if with_turn:
        servers.append(f"turn:{user}:{password}@{turn.address}:{turn.port}")
    return servers


def test_two_home_routers_connect_directly_over_server_reflexive_addresses(lab: NetLab) -> None:
    assert lab.turn is not None
    home1, home2 = lab.home_network("cone1", nat="cone"), lab.home_network("cone2", nat="cone")
    with Switchboard(lab.workdir) as board:
        a = board.start(home1.host("a"), ice_servers(lab.turn))
        b = board.start(home2.host("b"), ice_servers(lab.turn))

        link = a.connect(b)
        (inbound,) = b.links()
        sent = a.send(b, size=256 * 1024, count=8, parallel=2)

    assert not link["path"]["relayed"] and not inbound["path"]["relayed"], (link, inbound)
    assert link["path"]["remote"][0] == home2.public_address  # b's router, as b's STUN answer showed it
    assert inbound["path"]["remote"][0] == home1.public_address
    assert link["chunk_size"] <= MTU_SAFE_CHUNK and inbound["chunk_size"] <= MTU_SAFE_CHUNK  # fits the path
    assert sent["answered"] == 8
    print(f"direct: connected in {link['seconds']:.2f} s, {sent['mb_per_s']:.1f} MB/s")


def test_two_symmetric_nats_fall_back_to_turn_and_need_it(lab: NetLab) -> None:
    assert lab.turn is not None
    home1, home2 = lab.home_network("sym1", nat="symmetric"), lab.home_network("sym2", nat="symmetric")
    with Switchboard(lab.workdir) as board:
        a = board.start(home1.host("a"), ice_servers(lab.turn))
        b = board.start(home2.host("b"), ice_servers(lab.turn))
        link = a.connect(b)
        (inbound,) = b.links()
        sent = a.send(b, size=256 * 1024, count=8, parallel=2)

        stun_only_a = board.start(home1.host("c"), ice_servers(lab.turn, with_turn=False), connect_timeout=5)
        stun_only_b = board.start(home2.host("d"), ice_servers(lab.turn, with_turn=False), connect_timeout=5)
        with pytest.raises(RuntimeError, match=r"timed out|failed"):
            stun_only_a.connect(stun_only_b, timeout=30)

    assert link["path"]["relayed"] and inbound["path"]["relayed"], (link, inbound)
    assert lab.turn.address in (link["path"]["local"][0], link["path"]["remote"][0])
    assert link["chunk_size"] <= MTU_SAFE_CHUNK and inbound["chunk_size"] <= MTU_SAFE_CHUNK
    assert sent["answered"] == 8
    print(f"relayed: connected in {link['seconds']:.2f} s, {sent['mb_per_s']:.1f} MB/s")

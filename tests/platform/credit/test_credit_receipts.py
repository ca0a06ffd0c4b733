"""Portal verification of work receipts: only real, signed, credentialed, non-self-dealt work earns credit.

Every rule has its test: forged signatures, replays, revoked credentials, self-dealing, over-claims, the
share cap and the clock window; the last test sends receipts through the real signed heartbeat endpoint.
"""

from __future__ import annotations

import dataclasses
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.utils import timezone

from accounts.models import User
from credit import services
from credit.models import CreditRefusal, NodeCredit, TrainerProgress, WorkReceipt
from node_agent.credit.flops import sample_flops
from node_agent.credit.receipts import (
    Receipt,
    encode_receipt,
    receipt_to_text,
    sign_receipt,
)
from node_agent.identity import Identity
from projects.models import Project
from swarm.models import IssuedCredential, Node
from tests.platform.conftest import make_user

pytestmark = pytest.mark.django_db
NOW = datetime(2026, 11, 30, 12, 0, 30, tzinfo=UTC)
MINUTE = int(NOW.timestamp() // 60) - 1


@dataclasses.dataclass
class Party:
    identity: Identity
    node: Node
    cid: str


def _party(project: Project, user: User, cid: str, role: str) -> Party:
    identity = Identity.generate()
    node = Node.objects.create(
        project=project, user=user, public_key=identity.public_key_bytes.hex(),
        node_id=identity.node_id.hex(), role=role,
    )  # fmt: skip
    IssuedCredential.objects.create(
        cid=cid, node=node, issued_at=NOW - timedelta(hours=1), expires_at=NOW + timedelta(hours=1)
    )
    return Party(identity, node, cid)


@pytest.fixture
def swarm(project: Project, volunteer: User) -> dict[str, Party]:
    trainer_user = make_user("trainer@example.com")
    parties = {
        "server": _party(project, volunteer, "c-server", "server"),
        "trainer": _party(project, trainer_user, "c-trainer", "trainer"),
        "own_trainer": _party(project, volunteer, "c-own", "trainer"),
    }
    for name in ("trainer", "own_trainer"):
        services.progress_record(node=parties[name].node, heartbeat_samples=10_000)
    return parties


def receipt(trainer: Party, server: Party, *, minute: int = MINUTE, forward: int = 64, backward: int = 64,
            **changes: Any) -> str:  # fmt: skip
    draft = Receipt(
        cid=trainer.cid, trainer_key=trainer.identity.public_key_bytes, server=server.identity.node_id,
        minute=minute, uids=("ffn.0.0",), forward=forward, backward=backward, answers=2,
        first_nonce=b"a" * 16, last_nonce=b"z" * 16, chain=b"h" * 32,
    )  # fmt: skip
    signed = sign_receipt(trainer.identity, draft)
    return receipt_to_text(encode_receipt(dataclasses.replace(signed, **changes)))


def record(server: Party, *texts: str, now: datetime = NOW) -> services.ReceiptOutcome:
    return services.receipts_record(server=Node.objects.get(pk=server.node.pk), texts=texts, now=now)


def refusals() -> dict[str, int]:
    return {row.reason: row.count for row in CreditRefusal.objects.all()}


def credit_of(party: Party) -> float:
    row = NodeCredit.objects.filter(node=party.node).first()
    return row.total if row else 0.0


def test_a_valid_receipt_earns_the_flops_the_portal_computes(
    swarm: dict[str, Party], project: Project
) -> None:
    outcome = record(swarm["server"], receipt(swarm["trainer"], swarm["server"], forward=64, backward=32))
    expected = sample_flops(project.expert_architecture, project.hidden_size).credit(64, 32)
    assert (outcome.accepted, outcome.refused) == (1, 0)
    assert credit_of(swarm["server"]) == pytest.approx(expected) and expected > 0
    assert WorkReceipt.objects.get().flops == pytest.approx(expected)
    assert refusals() == {}


def test_forged_trainer_signatures_earn_nothing(swarm: dict[str, Party]) -> None:
    server, trainer = swarm["server"], swarm["trainer"]
    inflated = receipt(trainer, server, forward=10**6)  # signed, then altered below
    forged = receipt(trainer, server, signature=b"\x00" * 64)
    impostor = Party(Identity.generate(), trainer.node, trainer.cid)  # someone else's key, a real cid
    outcome = record(server, forged, receipt(impostor, server), inflated[:-4] + "AAAA")
    assert outcome.accepted == 0 and credit_of(server) == 0
    assert refusals()["bad_signature"] >= 1 and refusals()["wrong_trainer"] == 1


def test_a_replayed_receipt_counts_once(swarm: dict[str, Party]) -> None:
    text = receipt(swarm["trainer"], swarm["server"])
    first = record(swarm["server"], text, text)
    second = record(swarm["server"], text)
    assert (first.accepted, second.accepted) == (1, 0)
    assert WorkReceipt.objects.count() == 1 and refusals() == {"replay": 2}
    # another receipt of the same trainer, server and minute (an overlapping count) is refused too
    assert record(swarm["server"], receipt(swarm["trainer"], swarm["server"], forward=1)).accepted == 0


def test_receipts_after_a_revocation_earn_nothing(swarm: dict[str, Party]) -> None:
    IssuedCredential.objects.filter(cid="c-trainer").update(revoked_at=NOW - timedelta(minutes=5))
    before = receipt(swarm["trainer"], swarm["server"], minute=MINUTE - 10)
    after = receipt(swarm["trainer"], swarm["server"], minute=MINUTE)
    outcome = record(swarm["server"], before, after)
    assert outcome.accepted == 1 and refusals() == {"revoked": 1}
    assert WorkReceipt.objects.get().minute == MINUTE - 10


def test_self_dealing_earns_nothing(swarm: dict[str, Party]) -> None:
    outcome = record(swarm["server"], receipt(swarm["own_trainer"], swarm["server"]))
    assert outcome.accepted == 1 and credit_of(swarm["server"]) == 0
    assert WorkReceipt.objects.get().flops == 0 and refusals() == {"self_dealing": 1}


def test_a_trainer_cannot_grant_more_than_its_progress_allows(
    swarm: dict[str, Party], project: Project, settings: Any
) -> None:
    settings.CREDIT = {**settings.CREDIT, "SAMPLES_PER_TRAINER_SAMPLE": 2}
    TrainerProgress.objects.filter(node=swarm["trainer"].node).update(reported_samples=100)
    record(swarm["server"], receipt(swarm["trainer"], swarm["server"], forward=500, backward=500))
    prices = sample_flops(project.expert_architecture, project.hidden_size)
    assert credit_of(swarm["server"]) == pytest.approx(prices.credit(500, 500) * 200 / 1000)
    assert refusals() == {"over_claim": 1}
    record(swarm["server"], receipt(swarm["trainer"], swarm["server"], minute=MINUTE - 1))
    assert credit_of(swarm["server"]) == pytest.approx(prices.credit(500, 500) * 200 / 1000)  # used up


def test_no_trainer_may_exceed_its_share_of_a_server(
    swarm: dict[str, Party], project: Project, volunteer: User, settings: Any
) -> None:
    settings.CREDIT = {**settings.CREDIT, "SHARE_FLOOR_FLOPS": 0.0, "MAX_TRAINER_SHARE": 0.5}
    other = _party(project, make_user("other@example.com"), "c-other", "trainer")
    services.progress_record(node=other.node, heartbeat_samples=10_000)
    server = swarm["server"]
    record(server, receipt(other, server, minute=MINUTE - 2, forward=10, backward=0))
    record(server, receipt(swarm["trainer"], server, minute=MINUTE - 1, forward=1000, backward=0))
    flops = {row.trainer_id: row.flops for row in WorkReceipt.objects.all()}
    assert flops[swarm["trainer"].node.pk] == pytest.approx(flops[other.node.pk])  # capped at 50 %
    assert refusals()["share_cap"] == 2  # the first one was capped too (no other credit yet)


def test_the_owners_trainer_is_not_share_capped(swarm: dict[str, Party], project: Project,
                                                settings: Any) -> None:  # fmt: skip
    settings.CREDIT = {**settings.CREDIT, "SHARE_FLOOR_FLOPS": 0.0}
    owners = _party(project, project.owner, "c-owner", "trainer")
    services.progress_record(node=owners.node, heartbeat_samples=10_000)
    record(swarm["server"], receipt(owners, swarm["server"]))
    assert credit_of(swarm["server"]) > 0 and refusals() == {}


def test_clock_window_wrong_server_and_unknown_credentials(swarm: dict[str, Party]) -> None:
    server, trainer = swarm["server"], swarm["trainer"]
    texts = [
        receipt(trainer, server, minute=MINUTE + 30),  # from the future
        receipt(trainer, server, minute=MINUTE - 60 * 24 * 2),  # too old
        receipt(trainer, swarm["trainer"]),  # names another server
        receipt(Party(trainer.identity, trainer.node, "c-nobody"), server),
        "!!not base64!!",
    ]
    assert record(server, *texts).accepted == 0
    assert refusals() == {
        "clock": 1, "outside_credential": 1, "wrong_server": 1, "unknown_credential": 1, "malformed": 1
    }  # fmt: skip


def test_receipts_travel_in_signed_heartbeats(
    signed_post: Any, make_heartbeat: Any, joined: dict[str, Any], node_key: Identity, project: Project
) -> None:
    """The server uploads receipts in its real heartbeat; the credit lands on its node."""
    now = timezone.now()
    server_node = Node.objects.get(public_key=node_key.public_key_bytes.hex())
    server = Party(node_key, server_node, "unused")
    trainer = _party(project, make_user("t2@example.com"), "c-t2", "trainer")
    IssuedCredential.objects.filter(cid="c-t2").update(
        issued_at=now - timedelta(hours=1), expires_at=now + timedelta(hours=1)
    )
    services.progress_record(node=trainer.node, heartbeat_samples=1000)
    text = receipt(trainer, server, minute=int(time.time() // 60) - 1)
    body = make_heartbeat(node_key, joined["credential"], receipts=[text])
    response = signed_post("/api/v1/agent/heartbeat", node_key, body)
    assert response.status_code == 202, response.content
    assert credit_of(server) > 0 and WorkReceipt.objects.count() == 1

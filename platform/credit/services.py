"""Verify the work receipts a server uploads with its heartbeat and grant credit for them.

Each receipt passes, in order: schema; names the uploading server; the trainer's credential (issued by this
portal, to the key the receipt names, in the server's project, its node not banned, valid and not revoked at
the receipt's minute); the clock window; not seen before (one receipt per trainer, server and minute:
replays and overlaps count once); the trainer's signature (last, being the costly check). The server's
side is the heartbeat itself (signed with the server's key, its credential checked by `swarm.telemetry`).
Then the credit, priced here from the project's expert configuration, is limited: nothing when trainer and
server belong to one user; no more samples than the trainer's own reported progress allows; no trainer
above a share of the server's credit. Every refusal (whole or partial) is counted in `CreditRefusal`. Runs
inside the heartbeat's transaction, with the server's node row locked, so one server's uploads never race
each other.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from types import SimpleNamespace
from typing import Any

from django.conf import settings
from django.db import connection
from django.db.models import F

from credit import rac
from credit.models import CreditRefusal, NodeCredit, PairCredit, TrainerProgress, WorkReceipt
from node_agent.credit.flops import SampleFlops, sample_flops
from node_agent.credit.receipts import Receipt, ReceiptError, decode_receipt, receipt_from_text
from swarm.models import IssuedCredential, Node, NodeState

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ReceiptOutcome:
    accepted: int
    refused: int
    flops: float


class _Refused(Exception):
    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail


def progress_record(*, node: Node, heartbeat_samples: int) -> None:
    """A trainer's heartbeat: add the samples it trained since the last one (its counter restarts at 0)."""
    progress, _ = TrainerProgress.objects.get_or_create(node=node)
    last = progress.last_heartbeat_samples
    added = heartbeat_samples - last if heartbeat_samples >= last else heartbeat_samples
    TrainerProgress.objects.filter(pk=progress.pk).update(
        reported_samples=F("reported_samples") + added, last_heartbeat_samples=heartbeat_samples
    )


_CREDENTIAL_FIELDS = (
    "cid", "issued_at", "expires_at", "revoked_at",
    "node__id", "node__public_key", "node__project_id", "node__state", "node__user_id", "node__node_id",
)  # fmt: skip


def receipts_record(*, server: Node, texts: Sequence[str], now: datetime) -> ReceiptOutcome:
    """Verify and credit the receipts of one heartbeat (the caller holds the server row's lock)."""
    if not texts:
        return ReceiptOutcome(0, 0, 0.0)
    config = settings.CREDIT
    refusals: Counter[str] = Counter()
    details: dict[str, str] = {}
    receipts: list[Receipt] = []
    for text in texts:
        try:
            receipt = decode_receipt(receipt_from_text(text))
            if receipt.server.hex() != server.node_id:
                raise _Refused("wrong_server", "the receipt names another server")
        except ReceiptError as exc:
            refusals[exc.reason] += 1
            details[exc.reason] = exc.detail
            continue
        except _Refused as exc:
            refusals[exc.reason] += 1
            details[exc.reason] = exc.detail
            continue
        receipts.append(receipt)

    rows = IssuedCredential.objects.filter(cid__in={r.cid for r in receipts}).select_related("node")
    # Only what the checks read: a node row's JSON columns (experts, peers, ...) cost more than the rest.
    rows = rows.only(*_CREDENTIAL_FIELDS)
    credentials = {row.cid: row for row in rows}
    seen = _seen(server, {r.minute for r in receipts})
    checked: list[tuple[Receipt, Node]] = []
    for receipt in receipts:
        try:
            trainer = _trainer_node(receipt, credentials, server, now.timestamp(), config)
            key = (trainer.pk, receipt.minute)
            if key in seen:
                raise _Refused("replay", "this trainer's receipt for this minute was counted already")
            if not receipt.signature_valid():  # last: the costly check, after the cheap refusals
                raise _Refused("bad_signature", "not signed by the trainer key it names")
        except _Refused as exc:
            refusals[exc.reason] += 1
            details[exc.reason] = exc.detail
            continue
        seen.add(key)
        checked.append((receipt, trainer))
    granted_total = _grant_all(server, checked, refusals, details, now) if checked else 0.0
    for reason, count in refusals.items():
        _count_refusal(server, reason, count, details.get(reason, ""), now)
    if refusals:
        logger.info("receipts from node %s: refused %s", server.short_id, dict(refusals))
    return ReceiptOutcome(len(checked), len(texts) - len(checked), granted_total)


def _grant_all(
    server: Node,
    checked: list[tuple[Receipt, Node]],
    refusals: Counter[str],
    details: dict[str, str],
    now: datetime,
) -> float:
    """Apply the limits to verified receipts, store them and add the server's credit, in a few queries."""
    config = settings.CREDIT
    prices = _prices(server)
    trainer_ids = sorted({trainer.pk for _, trainer in checked})
    progress = _rows(TrainerProgress, "node_id", trainer_ids, ["reported_samples", "granted_samples"])
    pairs = _rows(PairCredit, "trainer_id", trainer_ids, ["flops"], scope={"server_id": server.pk})
    credit, _ = NodeCredit.objects.select_for_update().get_or_create(node=server, defaults={"recent_at": now})
    share = config["MAX_TRAINER_SHARE"]
    rows: list[tuple[Any, ...]] = []
    total_granted = 0.0
    received_at = connection.ops.adapt_datetimefield_value(now)
    for receipt, trainer in checked:
        claimed = float(prices.credit(receipt.forward, receipt.backward))
        samples = receipt.forward + receipt.backward
        allowed = samples
        if trainer.user_id == server.user_id:
            allowed = 0
            refusals["self_dealing"] += 1
            details["self_dealing"] = "trainer and server belong to the same user"
        trainer_progress = progress[trainer.pk]
        room = int(trainer_progress.reported_samples * config["SAMPLES_PER_TRAINER_SAMPLE"])
        room -= trainer_progress.granted_samples
        if allowed > room:
            allowed = max(0, room)
            refusals["over_claim"] += 1
            details["over_claim"] = "more samples than the trainer's own progress allows"
        trainer_progress.granted_samples += allowed
        granted = claimed * allowed / samples
        pair = pairs[trainer.pk]
        if granted and trainer.user_id != server.project.owner_id:  # the project trusts its own trainers
            own, others = pair.flops, credit.total + total_granted - pair.flops
            limit = max(config["SHARE_FLOOR_FLOPS"] - own, (share * others - (1 - share) * own) / (1 - share))
            if granted > limit:
                granted = max(0.0, limit)
                refusals["share_cap"] += 1
                details["share_cap"] = f"one trainer may grant at most {share:.0%} of a server's credit"
        pair.flops += granted
        total_granted += granted
        rows.append(
            (
                server.project_id, server.pk, trainer.pk, receipt.cid, receipt.minute, receipt.forward,
                receipt.backward, receipt.answers, receipt.first_nonce.hex(), receipt.last_nonce.hex(),
                receipt.chain.hex(), claimed, granted, received_at,
            )
        )  # fmt: skip
    _insert(WorkReceipt, _RECEIPT_COLUMNS, rows)
    _set_column(TrainerProgress, "granted_samples", {p.id: p.granted_samples for p in progress.values()})
    _set_column(PairCredit, "flops", {p.id: p.flops for p in pairs.values()})
    if total_granted > 0:
        elapsed = (now - credit.recent_at).total_seconds()
        credit.recent = rac.decayed(credit.recent, elapsed) + total_granted
        credit.recent_at = max(now, credit.recent_at)
        credit.total += total_granted
        credit.save(update_fields=["recent", "recent_at", "total"])
    return total_granted


def _seen(server: Node, minutes: set[int]) -> set[tuple[int, int]]:
    """(trainer id, minute) of the server's receipts already counted for these minutes."""
    if not minutes:
        return set()
    table = connection.ops.quote_name(WorkReceipt._meta.db_table)
    marks = ", ".join(["%s"] * len(minutes))
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT trainer_id, minute FROM {table} WHERE server_id = %s AND minute IN ({marks})",
            [server.pk, *minutes],
        )
        return {(trainer, minute) for trainer, minute in cursor.fetchall()}


def _rows(
    model: Any, key: str, ids: list[int], columns: list[str], scope: dict[str, int] | None = None
) -> dict[int, SimpleNamespace]:
    """Rows of `model` (within `scope`) for each id, created where missing, locked in id order. Only `id`
    and `columns` are read, into plain namespaces: the ORM's query building and model objects cost more
    than the checks here."""
    scope = scope or {}
    found = _select_locked(model, key, ids, columns, scope)
    missing = [i for i in ids if i not in found]
    if missing:
        model.objects.bulk_create([model(**scope, **{key: i}) for i in missing], ignore_conflicts=True)
        found |= _select_locked(model, key, missing, columns, scope)
    return found


def _select_locked(
    model: Any, key: str, ids: list[int], columns: list[str], scope: dict[str, int]
) -> dict[int, SimpleNamespace]:
    quote = connection.ops.quote_name
    names = ", ".join(quote(c) for c in ["id", key, *columns])
    where = [f"{quote(name)} = %s" for name in scope] + [f"{quote(key)} IN ({', '.join(['%s'] * len(ids))})"]
    lock = " FOR UPDATE" if connection.features.has_select_for_update else ""
    sql = (
        f"SELECT {names} FROM {quote(model._meta.db_table)} WHERE {' AND '.join(where)} ORDER BY {quote(key)}"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql + lock, [*scope.values(), *ids])
        rows = cursor.fetchall()
    return {row[1]: SimpleNamespace(id=row[0], **dict(zip(columns, row[2:], strict=True))) for row in rows}


def _prices(server: Node) -> SampleFlops:
    project = server.project
    try:
        return sample_flops(project.expert_architecture, project.hidden_size)
    except ValueError:
        return SampleFlops(0, 0)


def _trainer_node(
    receipt: Receipt,
    credentials: dict[str, IssuedCredential],
    server: Node,
    now: float,
    config: dict[str, float],
) -> Node:
    row = credentials.get(receipt.cid)
    if row is None:
        raise _Refused("unknown_credential", "this portal issued no such credential")
    trainer = row.node
    if trainer.public_key != receipt.trainer_key.hex():
        raise _Refused("wrong_trainer", "the credential belongs to another key")
    if trainer.project_id != server.project_id:
        raise _Refused("wrong_project", "the trainer's credential is for another project")
    if trainer.state == NodeState.BANNED:
        raise _Refused("banned", "the trainer node is banned")
    start, end = receipt.minute * 60.0, receipt.minute * 60.0 + 60.0
    if end < row.issued_at.timestamp() or start > row.expires_at.timestamp():
        raise _Refused("outside_credential", "the minute is outside the credential's validity")
    if row.revoked_at is not None and start >= row.revoked_at.timestamp():
        raise _Refused("revoked", "the credential was revoked before this minute")
    if start > now + config["CLOCK_SKEW_S"] or end < now - config["MAX_AGE_S"]:
        raise _Refused("clock", "the minute is outside the portal's clock window")
    return trainer


_RECEIPT_COLUMNS = (
    "project_id", "server_id", "trainer_id", "cid", "minute", "forward", "backward", "answers",
    "first_nonce", "last_nonce", "chain", "claimed_flops", "flops", "received_at",
)  # fmt: skip
#: Rows per INSERT statement (14 parameters each stay under SQLite's oldest 999-parameter limit).
_INSERT_ROWS = 64


def _insert(model: Any, columns: Sequence[str], rows: list[tuple[Any, ...]]) -> None:
    """Insert plain tuples: `COPY` on PostgreSQL (a fifth of a multi-row INSERT's cost, which quotes every
    value in Python), a multi-row `INSERT` elsewhere. Either beats `bulk_create`, which builds a model object
    and prepares every field of every row (together as costly as the signature checks here)."""
    table = connection.ops.quote_name(model._meta.db_table)
    names = ", ".join(connection.ops.quote_name(c) for c in columns)
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            with cursor.cursor.copy(f"COPY {table} ({names}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
            return
        row_marks = "(" + ", ".join(["%s"] * len(columns)) + ")"
        for start in range(0, len(rows), _INSERT_ROWS):
            chunk = rows[start : start + _INSERT_ROWS]
            marks = ", ".join([row_marks] * len(chunk))
            cursor.execute(f"INSERT INTO {table} ({names}) VALUES {marks}", [v for row in chunk for v in row])


def _set_column(model: Any, column: str, values: dict[int, Any]) -> None:
    """One `UPDATE ... SET column = CASE id ...` for many rows (Django's bulk_update builds an expression
    tree per row, which cost more than the signature checks here)."""
    if not values:
        return
    table = connection.ops.quote_name(model._meta.db_table)
    name = connection.ops.quote_name(column)
    cases = " ".join(["WHEN %s THEN %s"] * len(values))
    marks = ", ".join(["%s"] * len(values))
    params: list[Any] = [x for pk, value in values.items() for x in (pk, value)] + list(values)
    with connection.cursor() as cursor:
        cursor.execute(f"UPDATE {table} SET {name} = CASE id {cases} END WHERE id IN ({marks})", params)


def _count_refusal(server: Node, reason: str, count: int, detail: str, now: datetime) -> None:
    row, _ = CreditRefusal.objects.get_or_create(project_id=server.project_id, server=server, reason=reason)
    CreditRefusal.objects.filter(pk=row.pk).update(
        count=F("count") + count, last_at=now, last_detail=detail[:200]
    )

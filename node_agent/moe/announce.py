"""How expert servers announce their experts in the DHT, and how readers interpret announcements.

Format (namespace `experts:`; every subkey is owner-protected, so only the hosting node can write it):

* For each hosted uid, e.g. `ffn.3.14`, and each proper prefix of it (`node_agent.moe.uids`):
  key `experts:ffn.`   subkey `3@<owner node id hex>`
  key `experts:ffn.3.` subkey `14@<owner node id hex>`
  Beam search reads a prefix key and learns which next coordinates are alive and who serves them.
* key `experts:ffn.3.14`, subkey `@<owner node id hex>`: one entry per replica; `get_experts` reads these.

Every value is `{"endpoint": "host:port", "node_id": <20 bytes>, "t": <announce unix time>}`, plus
`"withdrawn": true` when the server shut down, plus `"cred": <portal credential token>` in a gated project
(`node_agent.portal.gate`): there, peers refuse an announcement *or a withdrawal* whose credential is
missing, expired, forged, for another project, issued to another node key or revoked (a node whose
credential is no longer valid has nothing to withdraw: readers already refuse its announcements). A
withdrawal is as constrained as an announcement: owner-protected subkey, expiry at most
`MAX_ANNOUNCE_TTL` ahead, and small (`MAX_WITHDRAWAL_SIZE`). The DHT keeps the later expiration by
default, so a withdrawal could never replace an announcement; this namespace's validator prefers the
larger `t` instead (newer statement from the same owner wins), and readers skip withdrawn entries.
Credential failures raise `DHTRecordRefused` (a relayer without the project's credential policy could not
have known); schema failures raise `DHTValidationError` (every honest node refuses those).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from node_agent.dht.api import (
    ID_BYTES,
    DHTNodeAPI,
    DHTRecordRefused,
    DHTValidationError,
    RecordValidator,
    RecordView,
    ValueWithExpiration,
    owner_subkey,
    subkey_owner,
)
from node_agent.dht.endpoints import MAX_RELAYS, checked_relays, parse_endpoint
from node_agent.moe.api import ExpertHandle
from node_agent.moe.uids import is_valid_prefix, is_valid_uid, uid_prefix_chain

EXPERTS_NAMESPACE = "experts:"
MAX_ENDPOINT_LENGTH = 64  # "[v6 address]:port" fits; the server's DHT endpoint is a numeric address
MAX_ANNOUNCE_TTL = 600.0  # seconds an announcement or withdrawal may live (servers re-announce well before)
MAX_ANNOUNCEMENT_SIZE = 1024
MAX_WITHDRAWAL_SIZE = 640  # endpoint, node id, time, flag and a real credential token (~400 chars at most)
MAX_CREDENTIAL_LENGTH = 600
_VALUE_FIELDS = {"endpoint", "node_id", "t", "withdrawn", "cred", "relays"}


class CredentialChecker(Protocol):
    """`node_agent.portal.gate.CredentialPolicy`: raises a ValueError subclass if `token` is not valid."""

    def check(self, token: object, *, owner: bytes, now: float) -> Any: ...


def uid_key(uid: str) -> str:
    return EXPERTS_NAMESPACE + uid


def prefix_key(prefix: str) -> str:
    """`prefix_key("ffn.3.")` -> `"experts:ffn.3."` (the prefix keeps its trailing delimiter)."""
    return EXPERTS_NAMESPACE + prefix


@dataclass(frozen=True, slots=True)
class Announcement:
    endpoint: str
    node_id: bytes
    announced_at: float
    expiration: float
    withdrawn: bool = False
    relays: tuple[str, ...] = ()


def announcement_value(
    endpoint: str,
    node_id: bytes,
    now: float,
    withdrawn: bool = False,
    credential: str | None = None,
    relays: Iterable[str] = (),
) -> dict[str, Any]:
    value: dict[str, Any] = {"endpoint": endpoint, "node_id": node_id, "t": now}
    if withdrawn:
        value["withdrawn"] = True
    elif relays:
        value["relays"] = list(relays)[:MAX_RELAYS]
    if credential is not None:
        value["cred"] = credential
    return value


def announcement_records(
    uids: Iterable[str],
    node_id: bytes,
    endpoint: str,
    now: float,
    expiration: float,
    withdrawn: bool = False,
    credential: str | None = None,
    relays: Iterable[str] = (),
) -> list[tuple[str, str | None, Any, float]]:
    """All `(key, subkey, value, expiration)` items announcing (or withdrawing) `uids`, deduplicated."""
    value = announcement_value(endpoint, node_id, now, withdrawn, credential, relays)
    items: dict[tuple[str, str], Any] = {}
    for uid in uids:
        for prefix, coordinate in uid_prefix_chain(uid):
            items[(prefix_key(prefix), owner_subkey(str(coordinate), node_id))] = value
        items[(uid_key(uid), owner_subkey("", node_id))] = value
    return [(key, subkey, v, expiration) for (key, subkey), v in items.items()]


def parse_announcement(entry: ValueWithExpiration) -> Announcement | None:
    """An entry as read from the DHT, or None if it is malformed (already validated by honest peers)."""
    value = entry.value
    if not isinstance(value, dict):
        return None
    endpoint, node_id, t = value.get("endpoint"), value.get("node_id"), value.get("t")
    if not isinstance(endpoint, str) or not isinstance(node_id, bytes) or not isinstance(t, int | float):
        return None
    relays = value.get("relays", [])
    return Announcement(
        endpoint,
        node_id,
        float(t),
        entry.expiration,
        bool(value.get("withdrawn", False)),
        tuple(r for r in relays if isinstance(r, str))[:MAX_RELAYS] if isinstance(relays, list) else (),
    )


def live_children(entries: Mapping[str | None, ValueWithExpiration]) -> dict[int, list[Announcement]]:
    """For a prefix key's entries: next coordinate -> live (non-withdrawn) announcements of servers.

    An announcement naming another node than its signed subkey's owner is skipped (as in `live_replicas`): a
    node cannot pass as another replica, e.g. to make the census think a cell is covered twice.
    """
    children: dict[int, list[Announcement]] = {}
    for subkey, entry in entries.items():
        owner = subkey_owner(subkey) if subkey is not None else None
        if subkey is None or owner is None:
            continue
        name = subkey.rsplit("@", 1)[0]
        announcement = parse_announcement(entry)
        if (
            not name.isdigit()
            or announcement is None
            or announcement.withdrawn
            or announcement.node_id != owner
        ):
            continue
        children.setdefault(int(name), []).append(announcement)
    return children


def live_replicas(uid: str, entries: Mapping[str | None, ValueWithExpiration]) -> list[ExpertHandle]:
    """For a full-uid key's entries: handles of the live replicas, freshest expiration first."""
    found = []
    for subkey, entry in entries.items():
        owner = subkey_owner(subkey)
        announcement = parse_announcement(entry)
        if owner is None or announcement is None or announcement.withdrawn or announcement.node_id != owner:
            continue
        handle = ExpertHandle(uid, owner, announcement.endpoint, announcement.relays)
        found.append((announcement.expiration, handle))
    return [handle for _, handle in sorted(found, key=lambda item: -item[0])]


class ExpertsValidator(RecordValidator):
    """Schema rules for the `experts:` namespace; the newer announcement (`t`) of an owner wins.

    With `credentials` (a gated project) an announcement or withdrawal must also carry a credential that
    the checker accepts for the record's owner.
    """

    max_value_size = MAX_ANNOUNCEMENT_SIZE
    max_expiration_ahead = MAX_ANNOUNCE_TTL

    def __init__(self, credentials: CredentialChecker | None = None) -> None:
        self.credentials = credentials

    def validate(self, record: RecordView, now: float) -> None:
        _check_subkey(record)
        withdrawn = _check_value(record, now)
        if withdrawn and record.value_size > MAX_WITHDRAWAL_SIZE:
            raise DHTValidationError(f"a withdrawal is at most {MAX_WITHDRAWAL_SIZE} bytes")
        if self.credentials is not None:
            if "cred" not in record.value:
                raise DHTRecordRefused("gated project: announcement or withdrawal carries no credential")
            try:
                self.credentials.check(record.value["cred"], owner=record.owner, now=now)
            except ValueError as exc:
                raise DHTRecordRefused(f"gated project: credential refused ({exc})") from exc

    def prefers(self, new: RecordView, old: RecordView) -> bool:
        new_t, old_t = _announce_time(new), _announce_time(old)
        if new_t != old_t:
            return new_t > old_t
        return new.expiration > old.expiration


def _check_subkey(record: RecordView) -> None:
    name = record.key[len(EXPERTS_NAMESPACE) :]
    owner = subkey_owner(record.subkey)
    if record.subkey is None or owner is None or owner != record.owner:
        raise DHTValidationError("expert announcements need an owner-protected subkey of the signer")
    label = record.subkey.rsplit("@", 1)[0]
    if is_valid_prefix(name):
        if not label.isdigit() or len(label) > 10:
            raise DHTValidationError(
                f"prefix announcement subkey must be '<coordinate>@<owner>', got {label!r}"
            )
    elif is_valid_uid(name):
        if label:
            raise DHTValidationError("uid announcement subkey must be '@<owner>'")
    else:
        raise DHTValidationError(f"{record.key!r} is not an expert uid or uid prefix")


def _check_value(record: RecordView, now: float) -> bool:
    """Schema of an announcement value (any honest node checks it); returns whether it is a withdrawal."""
    value = record.value
    if not isinstance(value, dict) or not set(value) <= _VALUE_FIELDS:
        raise DHTValidationError(
            "announcement must be a map of endpoint, node_id, t[, withdrawn, cred, relays]"
        )
    endpoint, node_id, t = value.get("endpoint"), value.get("node_id"), value.get("t")
    if not isinstance(endpoint, str) or not 0 < len(endpoint) <= MAX_ENDPOINT_LENGTH:
        raise DHTValidationError(
            f"announcement endpoint must be 'host:port' of at most {MAX_ENDPOINT_LENGTH}"
        )
    try:
        parse_endpoint(endpoint)
    except ValueError as exc:
        raise DHTValidationError(f"announcement endpoint: {exc}") from None
    if not isinstance(node_id, bytes) or len(node_id) != ID_BYTES or node_id != record.owner:
        raise DHTValidationError("announcement node_id must be the signer's node id")
    if isinstance(t, bool) or not isinstance(t, int | float) or not math.isfinite(t) or t > now + 300:
        raise DHTValidationError("announcement time must be a unix time not in the future")
    withdrawn = value.get("withdrawn", False)
    if not isinstance(withdrawn, bool):
        raise DHTValidationError("withdrawn must be a boolean")
    if "relays" in value:
        _check_relays(value["relays"], record.owner)
    cred = value.get("cred")
    if "cred" in value and (not isinstance(cred, str) or not 0 < len(cred) <= MAX_CREDENTIAL_LENGTH):
        raise DHTValidationError(
            f"cred must be a credential token of at most {MAX_CREDENTIAL_LENGTH} characters"
        )
    return withdrawn


def _check_relays(relays: Any, owner: bytes) -> None:
    """The relay list rule every peer applies (`checked_relays`), as a schema failure."""
    try:
        checked_relays(relays, owner)
    except ValueError as exc:
        raise DHTValidationError(str(exc)) from None


def _announce_time(record: RecordView) -> float:
    value = record.value
    t = value.get("t") if isinstance(value, dict) else None
    return float(t) if isinstance(t, int | float) else -math.inf


def register_experts_validator(dht: DHTNodeAPI, credentials: CredentialChecker | None = None) -> None:
    """Register the `experts:` rules (gated when `credentials` is given); replaces an earlier registration."""
    dht.register_validator(EXPERTS_NAMESPACE, ExpertsValidator(credentials))


async def announce_experts(
    dht: DHTNodeAPI,
    uids: Iterable[str],
    ttl: float,
    withdrawn: bool = False,
    now: float | None = None,
    credential: str | None = None,
) -> list[bool]:
    """Store (or withdraw) announcements for `uids`; one bool per DHT item (True: some replica took it)."""
    now = time.time() if now is None else now
    items = announcement_records(
        uids, dht.node_id, dht.endpoint, now, now + ttl, withdrawn, credential, dht.relays
    )
    return await dht.store_many(items)

"""Signed answers and work receipts (pure: no sockets, no clocks; ``now`` is always passed in).

Every unit of work has two parties. The expert server signs each answer over ``(request nonce, uid, kind,
samples, output digest)`` with its node key; the trainer checks that signature, folds it into a hash chain
and, once a minute has closed, signs one cumulative :class:`Receipt` per server for that minute (its
credential id, its key, the server, the uids, forward and backward sample counts, first and last nonce,
the chain). It returns the receipt to the server over the data channel (`receipt` call); the server keeps
it (:class:`ReceiptStore`, bounded) and uploads it with its next heartbeats. The portal verifies the
trainer's signature, both credentials and the limits, and prices the samples itself (`flops`).

Signed bytes carry a domain prefix, so neither signature can be replayed as a credential, body or record.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from node_agent.identity import (
    NODE_ID_BYTES,
    PUBLIC_KEY_BYTES,
    SIGNATURE_BYTES,
    Identity,
    node_id_from_public_key,
    verify,
)
from node_agent.wire import WireError, pack, unpack

__all__ = [
    "KINDS",
    "MAX_RECEIPT_BYTES",
    "NONCE_BYTES",
    "Receipt",
    "ReceiptBook",
    "ReceiptError",
    "ReceiptStore",
    "answer_digest",
    "decode_receipt",
    "encode_receipt",
    "receipt_from_text",
    "receipt_to_text",
    "sign_answer",
    "verify_answer",
]

RECEIPT_VERSION = 1
NONCE_BYTES = 16
CHAIN_BYTES = 32
#: A receipt lists at most this many uids (a server hosts a few grid cells); counts cover all of them.
MAX_UIDS = 16
MAX_UID_LENGTH = 128
MAX_CID_LENGTH = 64
MAX_RECEIPT_BYTES = 1024
#: Samples one receipt may claim per kind (far above a minute of any real server's work).
MAX_SAMPLES = 2**40
KINDS = ("forward", "backward")
_ANSWER_DOMAIN = b"colearn-answer-v1\x00"
_RECEIPT_DOMAIN = b"colearn-receipt-v1\x00"
_FIELDS = frozenset({"v", "c", "k", "s", "m", "u", "f", "b", "n", "a", "z", "h", "sig"})


class ReceiptError(ValueError):
    """A malformed or badly signed receipt; `reason` is a short code for counters and logs."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


# ---- answers (server signs, trainer checks) ---------------------------------------------------------------


def answer_digest(encoded_tensors: Any) -> bytes:
    """SHA-256 of the answer's encoded tensors as they travel (both sides hash the same msgpack bytes)."""
    return hashlib.sha256(pack(encoded_tensors)).digest()


def _answer_bytes(nonce: bytes, uid: str, kind: str, samples: int, digest: bytes) -> bytes:
    return _ANSWER_DOMAIN + pack([nonce, uid, kind, samples, digest])


def sign_answer(identity: Identity, nonce: bytes, uid: str, kind: str, samples: int, digest: bytes) -> bytes:
    return identity.sign(_answer_bytes(nonce, uid, kind, samples, digest))


def verify_answer(
    public_key: bytes, nonce: bytes, uid: str, kind: str, samples: int, digest: bytes, signature: bytes
) -> bool:
    """True if the server holding `public_key` signed this answer; never raises on malformed input."""
    if not isinstance(signature, bytes) or not isinstance(public_key, bytes):
        return False
    return verify(public_key, _answer_bytes(nonce, uid, kind, samples, digest), signature)


# ---- receipts (trainer signs, server keeps, portal verifies) ----------------------------------------------


@dataclass(frozen=True, slots=True)
class Receipt:
    """One trainer's cumulative receipt for one server and one minute (unix time // 60)."""

    cid: str
    trainer_key: bytes
    server: bytes
    minute: int
    uids: tuple[str, ...]
    forward: int
    backward: int
    answers: int
    first_nonce: bytes
    last_nonce: bytes
    chain: bytes
    signature: bytes = b""

    @property
    def trainer(self) -> bytes:
        return node_id_from_public_key(self.trainer_key)

    def signed_bytes(self) -> bytes:
        return _RECEIPT_DOMAIN + pack(_body(self))

    def signature_valid(self) -> bool:
        return verify(self.trainer_key, self.signed_bytes(), self.signature)


def _body(receipt: Receipt) -> dict[str, Any]:
    return {
        "v": RECEIPT_VERSION,
        "c": receipt.cid,
        "k": receipt.trainer_key,
        "s": receipt.server,
        "m": receipt.minute,
        "u": list(receipt.uids),
        "f": receipt.forward,
        "b": receipt.backward,
        "n": receipt.answers,
        "a": receipt.first_nonce,
        "z": receipt.last_nonce,
        "h": receipt.chain,
    }


def sign_receipt(identity: Identity, draft: Receipt) -> Receipt:
    if draft.trainer_key != identity.public_key_bytes:
        raise ValueError("a receipt is signed by the trainer it names")
    return Receipt(**{**_fields(draft), "signature": identity.sign(draft.signed_bytes())})


def _fields(receipt: Receipt) -> dict[str, Any]:
    return {name: getattr(receipt, name) for name in Receipt.__dataclass_fields__}


def encode_receipt(receipt: Receipt) -> bytes:
    data = pack({**_body(receipt), "sig": receipt.signature})
    if len(data) > MAX_RECEIPT_BYTES:
        raise ReceiptError("too_large", f"{len(data)} bytes exceeds {MAX_RECEIPT_BYTES}")
    return data


def receipt_to_text(data: bytes) -> str:
    """Encoded receipt -> unpadded base64url (how heartbeats, which are JSON, carry receipts)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def receipt_from_text(text: str) -> bytes:
    """The inverse of `receipt_to_text`; ReceiptError for anything that is not base64url."""
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ReceiptError("malformed", f"not base64url: {exc}") from None


def decode_receipt(data: object) -> Receipt:
    """Parse untrusted bytes into a Receipt (schema only; check `signature_valid()` separately)."""
    if not isinstance(data, bytes):
        raise ReceiptError("malformed", "a receipt is bytes")
    try:
        obj = unpack(data, MAX_RECEIPT_BYTES)
    except WireError as exc:
        raise ReceiptError("malformed", str(exc)) from None
    if not isinstance(obj, dict) or set(obj) != _FIELDS:
        raise ReceiptError("malformed", "a receipt is a map of exactly its fields")
    if obj["v"] != RECEIPT_VERSION:
        raise ReceiptError("malformed", f"unsupported receipt version {obj['v']!r}")
    cid, uids = obj["c"], obj["u"]
    if not isinstance(cid, str) or not 0 < len(cid) <= MAX_CID_LENGTH:
        raise ReceiptError("malformed", "c must be a credential id")
    if not isinstance(uids, list) or not 0 < len(uids) <= MAX_UIDS:
        raise ReceiptError("malformed", f"u must list 1..{MAX_UIDS} uids")
    if not all(isinstance(u, str) and 0 < len(u) <= MAX_UID_LENGTH for u in uids):
        raise ReceiptError("malformed", "uids must be short strings")
    counts = [obj[name] for name in ("m", "f", "b", "n")]
    if not all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= MAX_SAMPLES for c in counts):
        raise ReceiptError("malformed", "minute and counts must be non-negative integers")
    if obj["f"] + obj["b"] == 0 or obj["n"] == 0:
        raise ReceiptError("malformed", "a receipt covers at least one answer")
    sizes = {"k": PUBLIC_KEY_BYTES, "s": NODE_ID_BYTES, "a": NONCE_BYTES, "z": NONCE_BYTES}
    sizes |= {"h": CHAIN_BYTES, "sig": SIGNATURE_BYTES}
    for name, size in sizes.items():
        if not isinstance(obj[name], bytes) or len(obj[name]) != size:
            raise ReceiptError("malformed", f"{name} must be {size} bytes")
    return Receipt(
        cid=cid,
        trainer_key=obj["k"],
        server=obj["s"],
        minute=obj["m"],
        uids=tuple(uids),
        forward=obj["f"],
        backward=obj["b"],
        answers=obj["n"],
        first_nonce=obj["a"],
        last_nonce=obj["z"],
        chain=obj["h"],
        signature=obj["sig"],
    )


# ---- trainer side ------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Open:
    uids: list[str]
    forward: int = 0
    backward: int = 0
    answers: int = 0
    first_nonce: bytes = b""
    last_nonce: bytes = b""
    chain: bytes = b"\x00" * CHAIN_BYTES


@dataclass(slots=True)
class ReceiptBook:
    """A trainer's open receipts, one per (server, minute); closed minutes are signed and taken.

    Bounded: at most `max_open` open receipts (answers beyond are not receipted and counted in `dropped`).
    """

    identity: Identity
    cid: str
    max_open: int = 4096
    dropped: int = 0
    _open: dict[tuple[bytes, int], _Open] = field(default_factory=dict)

    def record(
        self, server: bytes, uid: str, kind: str, samples: int, nonce: bytes, signature: bytes, now: float
    ) -> None:
        """File one verified answer (its server signature goes into the minute's hash chain)."""
        key = (server, int(now // 60))
        entry = self._open.get(key)
        if entry is None:
            if len(self._open) >= self.max_open:
                self.dropped += 1
                return
            entry = self._open[key] = _Open(uids=[], first_nonce=nonce)
        if uid not in entry.uids and len(entry.uids) < MAX_UIDS:
            entry.uids.append(uid)
        if kind == "forward":
            entry.forward += samples
        else:
            entry.backward += samples
        entry.answers += 1
        entry.last_nonce = nonce
        entry.chain = hashlib.sha256(entry.chain + signature).digest()

    def take_closed(self, now: float) -> list[Receipt]:
        """Signed receipts of every minute before the current one (each minute is receipted once)."""
        current = int(now // 60)
        return self._take([key for key in self._open if key[1] < current])

    def take_all(self) -> list[Receipt]:
        """Everything, the current minute included (on stop: the trainer will not add to it)."""
        return self._take(list(self._open))

    def _take(self, keys: Iterable[tuple[bytes, int]]) -> list[Receipt]:
        taken = []
        for server, minute in keys:
            entry = self._open.pop((server, minute))
            draft = Receipt(
                cid=self.cid,
                trainer_key=self.identity.public_key_bytes,
                server=server,
                minute=minute,
                uids=tuple(entry.uids),
                forward=entry.forward,
                backward=entry.backward,
                answers=entry.answers,
                first_nonce=entry.first_nonce,
                last_nonce=entry.last_nonce,
                chain=entry.chain,
            )
            taken.append(sign_receipt(self.identity, draft))
        return taken


# ---- server side -------------------------------------------------------------------------------------------


class ReceiptStore:
    """Receipts trainers returned to this server, kept until a heartbeat carried them to the portal.

    A receipt is kept only if it names this server, was signed by the calling trainer's key, is for a recent
    minute (`max_age_minutes`, a little ahead allowed) and is not a duplicate. Bounded in all (`capacity`,
    oldest first out) and per trainer (`per_trainer`: a trainer sends one per minute, so a trainer making up
    receipts for many minutes cannot push honest trainers' receipts out).
    """

    def __init__(
        self, own_node_id: bytes, capacity: int = 2048, per_trainer: int = 64, max_age_minutes: int = 180
    ) -> None:
        self.own_node_id = own_node_id
        self.capacity = capacity
        self.per_trainer = per_trainer
        self.max_age_minutes = max_age_minutes
        self._kept: dict[bytes, tuple[bytes, int]] = {}  # encoded -> (trainer, minute)
        self._keys: set[tuple[bytes, int]] = set()
        self._per_trainer: Counter[bytes] = Counter()
        self.refused = 0
        self.evicted = 0

    def add(self, data: object, caller: bytes | None, now: float) -> Receipt:
        """Keep one receipt or raise ReceiptError (the caller gets the reason as `bad_request`)."""
        try:
            receipt = decode_receipt(data)
            if receipt.server != self.own_node_id:
                raise ReceiptError("wrong_server", "the receipt names another server")
            if caller is None or receipt.trainer != caller:
                raise ReceiptError("wrong_trainer", "the receipt is not the caller's")
            current = int(now // 60)
            if not current - self.max_age_minutes <= receipt.minute <= current + 2:
                raise ReceiptError("clock", "the receipt's minute is not recent")
            key = (receipt.trainer, receipt.minute)
            if key in self._keys:
                raise ReceiptError("duplicate", "a receipt of this trainer and minute is already kept")
            if self._per_trainer[receipt.trainer] >= self.per_trainer:
                raise ReceiptError("too_many", "this trainer's receipts already fill its share")
            if not receipt.signature_valid():
                raise ReceiptError("bad_signature", "not signed by the trainer's key")
        except ReceiptError:
            self.refused += 1
            raise
        assert isinstance(data, bytes)
        while len(self._kept) >= self.capacity:
            self._forget(next(iter(self._kept)))
            self.evicted += 1
        self._kept[data] = key
        self._keys.add(key)
        self._per_trainer[receipt.trainer] += 1
        return receipt

    def peek(self, limit: int) -> list[bytes]:
        """The oldest `limit` receipts (still kept until `acknowledge`)."""
        return [data for data, _ in zip(self._kept, range(limit), strict=False)]

    def acknowledge(self, sent: Iterable[bytes]) -> None:
        """Forget receipts the portal received (it deduplicates, so a lost acknowledgement is harmless)."""
        for data in sent:
            if data in self._kept:
                self._forget(data)

    def _forget(self, data: bytes) -> None:
        key = self._kept.pop(data)
        self._keys.discard(key)
        self._per_trainer[key[0]] -= 1
        if self._per_trainer[key[0]] <= 0:
            del self._per_trainer[key[0]]

    def __len__(self) -> int:
        return len(self._kept)

"""Record validation: owner signature, owner-protected subkeys, size and expiry bounds, namespace rules.

Runs when a peer stores to us, when a lookup brings records back, and before our own store (pure: the
caller passes ``now``). Any failure raises DHTValidationError; the record is discarded.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import Any

import msgspec

from node_agent.dht.api import (
    DHTRecordRefused,
    DHTValidationError,
    RecordValidator,
    RecordView,
    subkey_owner,
)
from node_agent.dht.records import SignedRecord, record_signing_bytes
from node_agent.identity import verify
from node_agent.wire import WireError, unpack


class SchemaValidator(RecordValidator):
    """Checks a namespace's values against a msgspec type (e.g. a ``msgspec.Struct``)."""

    def __init__(
        self,
        schema: Any,
        max_value_size: int | None = None,
        max_expiration_ahead: float | None = None,
    ) -> None:
        self.schema = schema
        self.max_value_size = max_value_size
        self.max_expiration_ahead = max_expiration_ahead

    def validate(self, record: RecordView, now: float) -> None:
        try:
            msgspec.convert(record.value, self.schema, strict=True)
        except msgspec.ValidationError as exc:
            raise DHTValidationError(f"value for {record.key!r} breaks its schema: {exc}") from exc


class UnknownNamespaceValidator(RecordValidator):
    """Registered under the empty prefix by project nodes: keys outside the project's namespaces are
    refused (without blame: a newer peer may know a namespace we do not), so nobody can park data here
    that no project reader would ever check."""

    def validate(self, record: RecordView, now: float) -> None:
        raise DHTRecordRefused(f"{record.key[:64]!r} is in no namespace this node serves")


#: Signatures remembered as verified: a lookup brings the same records from every replica, and beam search
#: reads the same keys every step; an Ed25519 check costs ~100 us, a digest ~1 us. About 1 MiB at most.
VERIFIED_CACHE_SIZE = 16_384


class ValidatorRegistry:
    """Node-wide limits plus per-namespace validators; the longest registered prefix of a key applies."""

    def __init__(self, max_value_size: int, max_expiration_ahead: float) -> None:
        self.max_value_size = max_value_size
        self.max_expiration_ahead = max_expiration_ahead
        self._validators: dict[str, RecordValidator] = {}
        self._verified: OrderedDict[bytes, None] = OrderedDict()

    def _signature_ok(self, record: SignedRecord) -> bool:
        """Verify once per exact (signed bytes, key, signature); only successes are remembered."""
        signed = record_signing_bytes(record.key, record.subkey, record.value_bytes, record.expiration)
        digest = hashlib.sha256(signed + record.public_key + record.signature).digest()
        if digest in self._verified:
            self._verified.move_to_end(digest)
            return True
        if not verify(record.public_key, signed, record.signature):
            return False
        self._verified[digest] = None
        if len(self._verified) > VERIFIED_CACHE_SIZE:
            self._verified.popitem(last=False)
        return True

    def register(self, namespace_prefix: str, validator: RecordValidator) -> None:
        if not isinstance(validator, RecordValidator):
            raise TypeError("validator must subclass node_agent.dht.api.RecordValidator")
        self._validators[namespace_prefix] = validator

    def for_key(self, key: str) -> RecordValidator | None:
        best: str | None = None
        for prefix in self._validators:
            if key.startswith(prefix) and (best is None or len(prefix) > len(best)):
                best = prefix
        return self._validators[best] if best is not None else None

    def check(self, record: SignedRecord, now: float) -> RecordView:
        """Return the decoded view of a valid record, or raise DHTValidationError saying why not."""
        validator = self.for_key(record.key)
        max_size = self.max_value_size
        max_ahead = self.max_expiration_ahead
        if validator is not None:
            max_size = min(max_size, validator.max_value_size or max_size)
            max_ahead = min(max_ahead, validator.max_expiration_ahead or max_ahead)
        if len(record.value_bytes) > max_size:
            raise DHTValidationError(f"value of {len(record.value_bytes)} bytes exceeds {max_size}")
        if record.expiration <= now:
            raise ExpiredRecordError("record already expired")
        if record.expiration > now + max_ahead:
            raise DHTValidationError(f"expiration more than {max_ahead:.0f}s in the future")
        protected_by = subkey_owner(record.subkey)
        if protected_by is not None and protected_by != record.owner:
            raise DHTValidationError(
                f"subkey {record.subkey!r} is owner-protected and not signed by its owner"
            )
        if not self._signature_ok(record):
            raise DHTValidationError("bad record signature")
        try:
            value = unpack(record.value_bytes, max_size)
        except WireError as exc:
            raise DHTValidationError(f"undecodable value: {exc}") from exc
        view = RecordView(
            record.key, record.subkey, value, record.expiration, record.owner, len(record.value_bytes)
        )
        if validator is not None:
            try:
                validator.validate(view, now)
            except DHTValidationError:
                raise
            except Exception as exc:  # a buggy validator must not crash the node
                raise DHTValidationError(f"validator error: {type(exc).__name__}: {exc}") from exc
        return view

    def prefers(self, new: RecordView, old: RecordView) -> bool:
        validator = self.for_key(new.key)
        if validator is None:
            return new.expiration > old.expiration
        try:
            return bool(validator.prefers(new, old))
        except Exception:
            return False


class ExpiredRecordError(DHTValidationError):
    """The record's time is over: normal in transit (clock skew, slow path), so no penalty for the sender."""

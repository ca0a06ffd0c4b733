"""Signed records ``(key, subkey, value, expiration)``: self-authenticating, so any node may carry them.

The owner signs the packed value bytes together with key, subkey and expiration; nodes forward, replicate
and cache the record unchanged, and every receiver re-checks the signature (docs/architecture.md, 3.2).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Any

from node_agent.dht.api import ID_BYTES, DHTValidationError
from node_agent.identity import PUBLIC_KEY_BYTES, SIGNATURE_BYTES, Identity, node_id_from_public_key
from node_agent.wire import WireError, pack

_RECORD_DOMAIN = "colearn-dht-record-v1"  # domain separation: a record signature is never a message one
MAX_KEY_LENGTH = 512
MAX_SUBKEY_LENGTH = 512


def key_id(key: str) -> bytes:
    """Where ``key`` lives in the id space (Kademlia section 2.3: keys and node ids share the space)."""
    return hashlib.sha256(b"key\x00" + key.encode()).digest()[:ID_BYTES]


def record_signing_bytes(key: str, subkey: str | None, value_bytes: bytes, expiration: float) -> bytes:
    return pack([_RECORD_DOMAIN, key, subkey, value_bytes, expiration])


@dataclass(frozen=True, slots=True)
class SignedRecord:
    key: str
    subkey: str | None
    value_bytes: bytes  # the msgpack-packed value, exactly as signed
    expiration: float
    public_key: bytes
    signature: bytes
    owner: bytes = field(init=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "owner", node_id_from_public_key(self.public_key))

    def to_wire(self) -> list[Any]:
        return [self.key, self.subkey, self.value_bytes, self.expiration, self.public_key, self.signature]

    @classmethod
    def from_wire(cls, obj: Any) -> SignedRecord:
        """Parse the shape only (types and lengths); signature and rules are checked by validation."""
        if not isinstance(obj, list) or len(obj) != 6:
            raise WireError("record is not a 6-element list")
        key, subkey, value_bytes, expiration, public_key, signature = obj
        if not isinstance(key, str) or not 0 < len(key) <= MAX_KEY_LENGTH:
            raise WireError("record key must be a non-empty string")
        if subkey is not None and (not isinstance(subkey, str) or len(subkey) > MAX_SUBKEY_LENGTH):
            raise WireError("record subkey must be a string or nil")
        if not isinstance(value_bytes, bytes):
            raise WireError("record value must be bytes")
        if isinstance(expiration, bool) or not isinstance(expiration, int | float):
            raise WireError("record expiration must be a number")
        if not math.isfinite(expiration):
            raise WireError("record expiration must be finite")
        if not isinstance(public_key, bytes) or len(public_key) != PUBLIC_KEY_BYTES:
            raise WireError("record public key must be 32 bytes")
        if not isinstance(signature, bytes) or len(signature) != SIGNATURE_BYTES:
            raise WireError("record signature must be 64 bytes")
        return cls(key, subkey, value_bytes, float(expiration), public_key, signature)


def sign_record(
    identity: Identity, key: str, subkey: str | None, value: Any, expiration: float
) -> SignedRecord:
    """Pack and sign a record as ``identity``; raises DHTValidationError for unencodable values."""
    if not isinstance(key, str) or not key:
        raise DHTValidationError("key must be a non-empty string")
    if subkey is not None and not isinstance(subkey, str):
        raise DHTValidationError("subkey must be a string or None")
    if not math.isfinite(expiration):
        raise DHTValidationError("expiration must be a finite unix time")
    try:
        value_bytes = pack(value)
    except WireError as exc:
        raise DHTValidationError(f"value is not msgpack-serialisable: {exc}") from exc
    expiration = float(expiration)
    signature = identity.sign(record_signing_bytes(key, subkey, value_bytes, expiration))
    return SignedRecord(key, subkey, value_bytes, expiration, identity.public_key_bytes, signature)

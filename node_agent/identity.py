"""Node identity: an Ed25519 key pair whose public key hash is the node's DHT id.

Because the id is a hash of the key (docs/architecture.md, 3.1), nobody can choose their place in the DHT or
claim another node's id without its private key. The key is made on first run and kept with mode 0600.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

logger = logging.getLogger(__name__)

PUBLIC_KEY_BYTES = 32
SIGNATURE_BYTES = 64
NODE_ID_BYTES = 20
IDENTITY_FILE_NAME = "identity.key"


def node_id_from_public_key(public_key_bytes: bytes) -> bytes:
    """160-bit Kademlia id (Maymounkov & Mazieres 2002, section 2.1) derived from the public key."""
    return hashlib.sha256(public_key_bytes).digest()[:NODE_ID_BYTES]


def verify(public_key_bytes: bytes, data: bytes, signature: bytes) -> bool:
    """True if ``signature`` over ``data`` was made by the key; never raises on malformed input."""
    if len(public_key_bytes) != PUBLIC_KEY_BYTES or len(signature) != SIGNATURE_BYTES:
        return False
    try:
        Ed25519PublicKey.from_public_bytes(public_key_bytes).verify(signature, data)
    except (InvalidSignature, ValueError):
        return False
    return True


def default_identity_path() -> Path:
    """Where the key lives unless overridden: ``$COLEARN_IDENTITY`` or the user's data directory."""
    override = os.environ.get("COLEARN_IDENTITY")
    if override:
        return Path(override)
    import platformdirs  # imported lazily: only nodes that persist their key need it

    return Path(platformdirs.user_data_dir("colearn", appauthor=False)) / IDENTITY_FILE_NAME


class Identity:
    """An Ed25519 private key plus the derived public key bytes and node id."""

    __slots__ = ("_private_key", "node_id", "public_key_bytes")

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._private_key = private_key
        self.public_key_bytes: bytes = private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self.node_id: bytes = node_id_from_public_key(self.public_key_bytes)

    @classmethod
    def generate(cls) -> Identity:
        """A fresh in-memory identity (tests, throwaway benchmark peers)."""
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_private_bytes(cls, raw: bytes) -> Identity:
        return cls(Ed25519PrivateKey.from_private_bytes(raw))

    @classmethod
    def load_or_create(cls, path: str | os.PathLike[str] | None = None) -> Identity:
        """Load the key at ``path`` (default :func:`default_identity_path`), creating it on first run.

        The file holds the 32 raw private key bytes, written with mode 0600 from the start (never
        world-readable, not even briefly). A file with wider permissions is tightened with a warning.
        """
        key_path = Path(path) if path is not None else default_identity_path()
        if key_path.exists():
            mode = key_path.stat().st_mode & 0o777
            if mode & 0o077:
                logger.warning("identity file %s had mode %o; tightening to 0600", key_path, mode)
                key_path.chmod(0o600)
            raw = key_path.read_bytes()
            if len(raw) != 32:
                raise ValueError(f"identity file {key_path} is corrupt: expected 32 bytes, got {len(raw)}")
            return cls.from_private_bytes(raw)
        identity = cls.generate()
        key_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(identity.private_bytes())
        logger.info("created node identity %s at %s", identity.node_id.hex(), key_path)
        return identity

    def private_bytes(self) -> bytes:
        return self._private_key.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )

    def sign(self, data: bytes) -> bytes:
        return self._private_key.sign(data)

    def __repr__(self) -> str:
        return f"Identity(node_id={self.node_id.hex()})"

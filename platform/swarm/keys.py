"""The portal's Ed25519 signing key: it signs credentials and owns the DHT revocation lists.

Production reads a hex seed from PORTAL_SIGNING_KEY (or the file PORTAL_SIGNING_KEY_FILE names); a
development portal generates one at var/portal_key (mode 0600) on first use, so a fresh checkout works.
Agents learn the public half from the project config and check credentials offline with it.
"""

from __future__ import annotations

import functools

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from node_agent.identity import Identity


def _from_hex_seed(text: str) -> Identity:
    try:
        seed = bytes.fromhex(text.strip())
    except ValueError:
        raise ImproperlyConfigured("PORTAL_SIGNING_KEY must be 64 hex characters (an Ed25519 seed)") from None
    if len(seed) != 32:
        raise ImproperlyConfigured(f"PORTAL_SIGNING_KEY must be 32 bytes, got {len(seed)}")
    return Identity.from_private_bytes(seed)


@functools.cache
def portal_identity() -> Identity:
    """The portal key, loaded once per process."""
    if settings.PORTAL_SIGNING_KEY:
        return _from_hex_seed(settings.PORTAL_SIGNING_KEY)
    if settings.PORTAL_SIGNING_KEY_GENERATE:
        path = settings.VAR_DIR / "portal_key"
        try:
            return Identity.load_or_create(path)
        except FileExistsError:  # another process created it between our check and our write
            return Identity.load_or_create(path)
    raise ImproperlyConfigured("set PORTAL_SIGNING_KEY or PORTAL_SIGNING_KEY_FILE (an Ed25519 seed in hex)")


def portal_public_key() -> bytes:
    return portal_identity().public_key_bytes

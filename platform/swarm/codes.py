"""One-time join codes: easy to read aloud and type, stored only as a hash.

Twelve characters of Crockford's base32 (no I, L, O, U) give 60 bits: far beyond guessing within the
15 minutes a code lives. Input is normalised (case, dashes, spaces, look-alike letters) before hashing.
"""

from __future__ import annotations

import hashlib
import secrets

ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
CODE_LENGTH = 12
_LOOKALIKES = str.maketrans({"I": "1", "L": "1", "O": "0"})


def new_code() -> str:
    raw = "".join(secrets.choice(ALPHABET) for _ in range(CODE_LENGTH))
    return "-".join(raw[i : i + 4] for i in range(0, CODE_LENGTH, 4))


def normalise_code(text: str) -> str:
    return "".join(ch for ch in text.upper().translate(_LOOKALIKES) if ch in ALPHABET)


def code_hash(text: str) -> str:
    return hashlib.sha256(normalise_code(text).encode()).hexdigest()

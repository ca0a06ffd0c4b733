"""Signed HTTP bodies: a JSON body (with ``ts`` and ``nonce``) signed with the sender's node key.

Headers :data:`NODE_HEADER` (public key hex) and :data:`SIGNATURE_HEADER` (signature hex) carry the
signature of a domain prefix plus the raw body. :func:`verify_body` checks size, signature, nesting and
freshness; replay (a nonce seen before) is the portal's check because it needs storage. Pure: no sockets,
no clocks (``now`` is passed in).
"""

from __future__ import annotations

import json
import math
import re
import secrets
from collections.abc import Mapping
from typing import Any

import msgspec

from node_agent.identity import PUBLIC_KEY_BYTES, Identity, verify
from node_agent.portal.errors import SignedBodyError

__all__ = [
    "BODY_DOMAIN",
    "MAX_BODY_BYTES",
    "MAX_CLOCK_SKEW",
    "MAX_JSON_DEPTH",
    "NODE_HEADER",
    "SIGNATURE_HEADER",
    "json_loads_bounded",
    "new_nonce",
    "sign_body",
    "sign_raw_body",
    "verify_body",
]

NODE_HEADER = "X-Colearn-Node"
SIGNATURE_HEADER = "X-Colearn-Signature"
MAX_BODY_BYTES = 16 * 1024
MAX_CLOCK_SKEW = 60.0
#: Deepest nesting a signed body may have (json recurses once per level: 8,000 `[` overflow the stack).
MAX_JSON_DEPTH = 16
#: Prefix of every signed body's signed bytes (domain separation from credentials and DHT signatures).
BODY_DOMAIN = b"colearn-signed-body-v1\x00"


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_JSON_BRACKET = re.compile(r"[\[\]{}]")


def json_loads_bounded(raw: bytes | str, *, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """``json.loads`` that refuses nesting deeper than ``max_depth`` *before* parsing.

    The standard decoder recurses once per level, so a small body of nested brackets raises
    ``RecursionError``; this scan (strings removed, then brackets counted) is linear and raises
    ``ValueError`` instead. NaN and Infinity are refused too.
    """
    text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
    depth = 0
    for bracket in _JSON_BRACKET.finditer(_JSON_STRING.sub("", text)):
        depth += 1 if bracket.group() in "[{" else -1
        if depth > max_depth:
            raise ValueError(f"JSON nested deeper than {max_depth} levels")
    return json.loads(text, parse_constant=_reject_constant)


def new_nonce() -> str:
    return secrets.token_hex(16)


def sign_body(
    identity: Identity, body: msgspec.Struct | Mapping[str, Any], now: float, nonce: str | None = None
) -> tuple[bytes, dict[str, str]]:
    """JSON-encode ``body`` (a schema struct, or a mapping) plus ``ts``/``nonce``, sign it with the node key.

    Returns (raw, headers). Agents pass the body structs of :mod:`node_agent.portal.schemas`; mappings are
    for tests and tools that send what no honest agent would.
    """
    full = msgspec.to_builtins(body) if isinstance(body, msgspec.Struct) else dict(body)
    full["ts"] = float(now)
    full["nonce"] = nonce if nonce is not None else new_nonce()
    raw = json.dumps(full, separators=(",", ":"), sort_keys=True, allow_nan=False).encode()
    return raw, sign_raw_body(identity, raw)


def sign_raw_body(identity: Identity, raw: bytes) -> dict[str, str]:
    """The headers that sign exactly ``raw`` (whatever it holds) with the node key."""
    return {
        "Content-Type": "application/json",
        NODE_HEADER: identity.public_key_bytes.hex(),
        SIGNATURE_HEADER: identity.sign(BODY_DOMAIN + raw).hex(),
    }


def _header(headers: Mapping[str, str], name: str) -> str | None:
    """Case-insensitive header lookup (also accepts Django ``META`` names like ``HTTP_X_COLEARN_NODE``)."""
    wanted = name.lower()
    meta = "http_" + wanted.replace("-", "_")
    for key, value in headers.items():
        if isinstance(key, str) and key.lower() in (wanted, meta):
            return value if isinstance(value, str) else None
    return None


def verify_body(
    raw: bytes,
    headers: Mapping[str, str],
    *,
    now: float,
    max_skew: float = MAX_CLOCK_SKEW,
    max_bytes: int = MAX_BODY_BYTES,
) -> tuple[bytes, dict[str, Any]]:
    """Check a signed request; return (signer public key, body) or raise :class:`SignedBodyError`."""
    if len(raw) > max_bytes:
        raise SignedBodyError("too_large", f"{len(raw)} bytes exceeds the {max_bytes}-byte limit")
    key_hex, signature_hex = _header(headers, NODE_HEADER), _header(headers, SIGNATURE_HEADER)
    if not key_hex or not signature_hex:
        raise SignedBodyError("malformed", f"missing {NODE_HEADER} or {SIGNATURE_HEADER} header")
    try:
        public_key, signature = bytes.fromhex(key_hex), bytes.fromhex(signature_hex)
    except ValueError:
        raise SignedBodyError("malformed", "signature headers must be hex") from None
    if len(public_key) != PUBLIC_KEY_BYTES:
        raise SignedBodyError("malformed", f"{NODE_HEADER} must be a 32-byte key in hex")
    if not verify(public_key, BODY_DOMAIN + raw, signature):
        raise SignedBodyError("bad_signature", "body is not signed by the key in the header")
    try:
        body = json_loads_bounded(raw)
    except ValueError as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise SignedBodyError("malformed", f"body is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise SignedBodyError("malformed", "body must be a JSON object")
    ts, nonce = body.get("ts"), body.get("nonce")
    if isinstance(ts, bool) or not isinstance(ts, int | float) or not _finite_float(ts):
        raise SignedBodyError("malformed", "body needs a ts that is a finite number")
    if not isinstance(nonce, str) or not 16 <= len(nonce) <= 64 or not _is_hex(nonce):
        raise SignedBodyError("malformed", "body needs a hex nonce of 16..64 characters")
    if abs(now - ts) > max_skew:
        raise SignedBodyError("stale", f"timestamp is {now - ts:+.0f}s off (limit {max_skew:.0f}s)")
    return public_key, body


def _finite_float(number: int | float) -> bool:
    try:
        return math.isfinite(float(number))
    except OverflowError:  # an integer beyond the float range (10**400)
        return False


def _is_hex(text: str) -> bool:
    return all(c in "0123456789abcdefABCDEF" for c in text)

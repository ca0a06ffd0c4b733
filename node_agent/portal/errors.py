"""The errors of the portal formats, and the one strict decoder every schema goes through."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TypeVar

import msgspec

__all__ = ["CredentialError", "PayloadError", "ProtocolError", "SignedBodyError", "convert"]

S = TypeVar("S")

#: Float fields that must be finite wherever a schema has them (msgspec has no constraint for it).
_FINITE_FIELDS = ("loss", "samples_per_s", "uptime_s", "ts", "timestamp")


class ProtocolError(ValueError):
    """Bad input from the other side; ``reason`` is a short machine code, ``detail`` says what was wrong."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class CredentialError(ProtocolError):
    """Reasons: malformed, bad_signature, expired, wrong_project, wrong_node, revoked."""


class SignedBodyError(ProtocolError):
    """Reasons: ``malformed``, ``too_large``, ``bad_signature``, ``stale``."""


class PayloadError(ProtocolError):
    """A verified body (or config, or revocation list) that breaks its schema; reason ``invalid``."""

    def __init__(self, detail: str) -> None:
        super().__init__("invalid", detail)


def convert(body: object, schema: type[S], what: str) -> S:
    """``body`` (decoded JSON) as a ``schema`` struct, strictly; PayloadError with the reason otherwise."""
    if not isinstance(body, Mapping):
        raise PayloadError(f"{what} must be a JSON object")
    try:
        value = msgspec.convert(body, schema, strict=True)
    except msgspec.ValidationError as exc:
        raise PayloadError(f"{what}: {exc}") from None
    except UnicodeEncodeError:  # a lone surrogate ("\ud800" in the JSON) where a Literal is expected
        raise PayloadError(f"{what}: text must be valid Unicode") from None
    for name in _FINITE_FIELDS:
        number = getattr(value, name, 0.0)
        if isinstance(number, float) and not math.isfinite(number):
            raise PayloadError(f"{what}: {name} must be finite")
    return value

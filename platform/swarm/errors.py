"""Why a swarm service refused a request, in the domain's terms: a kind (the class), a code, a sentence.

Services raise these and know nothing of HTTP; `swarm.api.HTTP_STATUS` maps each kind to its status
code in one place.
"""

from __future__ import annotations


class SwarmRefusal(Exception):
    """A refused request; the API answers `{"error": code, "detail": detail}` with its kind's status."""

    def __init__(self, code: str, detail: str, *, retry_after: float | None = None) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail
        self.retry_after = retry_after


class InvalidRequest(SwarmRefusal):
    """The request is malformed or names something that does not fit (a wrong node id, a bad time)."""


class TooLarge(SwarmRefusal):
    """The request is larger than the portal reads."""


class NotAuthenticated(SwarmRefusal):
    """The signature or credential does not prove who sent the request."""


class NotPermitted(SwarmRefusal):
    """The sender is known but may not do this (banned, revoked, another account's node)."""


class NotFound(SwarmRefusal):
    """The project (or other object) does not exist for this caller."""


class Conflict(SwarmRefusal):
    """The request clashes with the current state (a replayed body, a used code, an inactive project)."""


class Expired(SwarmRefusal):
    """What the request relies on has expired for good (a join code)."""


class RateLimited(SwarmRefusal):
    """Too many requests; `retry_after` says when to try again."""


class Unavailable(SwarmRefusal):
    """The portal cannot serve the request right now (database busy); retrying later may work."""

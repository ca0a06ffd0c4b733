"""The refusals agent endpoints answer with: an HTTP status, a machine code and a sentence for humans."""

from __future__ import annotations


class AgentRequestError(Exception):
    """Raised by swarm services for a refused agent request; the API turns it into `{"error", "detail"}`."""

    def __init__(self, status: int, code: str, detail: str, *, retry_after: float | None = None) -> None:
        super().__init__(f"{code}: {detail}")
        self.status = status
        self.code = code
        self.detail = detail
        self.retry_after = retry_after

"""A simulated node agent for the live tests and the live benchmark: real keys, real signed bodies.

It joins a project the way `node-agent join` does (a one-time code from the portal traded for a
credential over `POST /api/v1/agent/join`) and then sends heartbeats and metrics over the same API, so
the portal runs its real checks (signature, credential, rate limit, nonce) and its real broadcasts.
`post` is any function that delivers a signed body: Django's test client, or urllib against Daphne.
"""

from __future__ import annotations

import json
import secrets
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from node_agent.identity import Identity
from node_agent.portal.signed_body import sign_body

Post = Callable[[str, bytes, dict[str, str]], tuple[int, dict[str, Any]]]


def http_poster(base_url: str, timeout: float = 10.0) -> Post:
    """Deliver signed bodies to a running portal over HTTP."""

    def post(path: str, raw: bytes, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
        request = urllib.request.Request(f"{base_url}{path}", data=raw, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.status, json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"{}")

    return post


def client_poster(client: Any) -> Post:
    """Deliver signed bodies through Django's test client (the real views, no server)."""

    def post(path: str, raw: bytes, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
        extra = {k: v for k, v in headers.items() if k != "Content-Type"}
        response = client.post(path, raw, content_type="application/json", headers=extra)
        return response.status_code, response.json()

    return post


@dataclass
class SimulatedNode:
    post: Post
    identity: Identity = field(default_factory=Identity.generate)
    credential: str = ""
    node_id: str = ""
    samples: int = 0
    requests: int = 0
    started: float = field(default_factory=time.time)

    def _send(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        raw, headers = sign_body(self.identity, body, time.time(), nonce=secrets.token_hex(16))
        status, payload = self.post(path, raw, headers)
        if status >= 300:
            raise RuntimeError(f"{path} answered {status}: {payload}")
        return payload

    def join(self, code: str) -> SimulatedNode:
        body = {"code": code, "agent_version": "0.1.0-test", "platform": "linux-test"}
        payload = self._send("/api/v1/agent/join", body)
        self.credential, self.node_id = payload["credential"], payload["node"]["node_id"]
        return self

    def heartbeat(
        self,
        *,
        role: str = "server",
        experts: list[str] | None = None,
        samples_per_s: float = 100.0,
        peers: list[tuple[str, int]] | None = None,
        replica_states: list[dict[str, Any]] | None = None,
        averaging_rounds: tuple[int, int] = (0, 0),
    ) -> dict[str, Any]:
        self.samples += int(samples_per_s)
        self.requests += 1
        body = {
            "credential": self.credential,
            "node_id": self.node_id,
            "endpoint": "127.0.0.1:40000",
            "agent_version": "0.1.0-test",
            "platform": "linux-test",
            "role": role,
            "experts": experts or [],
            "requests": self.requests,
            "samples": self.samples,
            "failures": 0,
            "bytes_in": 0,
            "bytes_out": 0,
            "samples_per_s": samples_per_s,
            "uptime_s": time.time() - self.started,
            "peers": [{"node_id": n, "requests": r} for n, r in peers or []],
            "replica_states": replica_states or [],
            "averaging_rounds_completed": averaging_rounds[0],
            "averaging_rounds_failed": averaging_rounds[1],
        }
        return self._send("/api/v1/agent/heartbeat", body)

    def metrics(self, points: list[tuple[int, float, float]]) -> dict[str, Any]:
        now = time.time()
        body = {
            "credential": self.credential,
            "node_id": self.node_id,
            "metrics": [
                {
                    "step": step,
                    "loss": loss,
                    "accuracy": accuracy,
                    "samples_per_s": 50.0,
                    "experts_answered": 2,
                    "experts_failed": 0,
                    "timestamp": now - len(points) + i,
                }
                for i, (step, loss, accuracy) in enumerate(points)
            ],
        }
        return self._send("/api/v1/agent/metrics", body)

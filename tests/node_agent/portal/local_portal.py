"""A small HTTP portal on 127.0.0.1 for agent-side tests (the real portal's end-to-end test lives elsewhere).

It speaks the real contract with the real checks and schemas of `node_agent.portal`: signed bodies are
verified, join codes are one-time, credentials are issued with a portal identity, heartbeats and metrics
are validated and recorded, and every answer is built from the real reply structs with the real portal's
status codes (join 201/202, renew 201, heartbeat and metrics 202). Tests can make it refuse, rate-limit,
hold joins for approval or go away.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from node_agent.identity import Identity, node_id_from_public_key
from node_agent.portal.errors import ProtocolError
from node_agent.portal.ice import IceServerSpec, TurnGrant, issue_turn_grant
from node_agent.portal.project_config import ExpertSpec, LMSpec, ProjectConfig, project_config_to_dict
from node_agent.portal.schemas import (
    ErrorReply,
    HeartbeatReply,
    JoinedNode,
    JoinReply,
    MetricsReply,
    PendingReply,
    RenewReply,
    reply_to_builtins,
    validate_export_fetch,
    validate_heartbeat,
    validate_join,
    validate_metrics,
    validate_renew,
)
from node_agent.portal.signed_body import verify_body
from node_agent.portal.tokens import issue_credential, verify_credential
from tests.processes import free_port


def _error(status: int, code: str, detail: str) -> tuple[int, dict, dict]:
    return status, reply_to_builtins(ErrorReply(error=code, detail=detail)), {}


@dataclass
class PortalBehaviour:
    """What the test portal does; tests change these fields while it runs."""

    project: str = "demo"
    bootstrap_peers: list[str] = field(default_factory=list)
    gated: bool = True
    grid: list[int] = field(default_factory=lambda: [2, 2])
    hidden_dim: int = 16
    codes: set[str] = field(default_factory=lambda: {"CODE-1234"})
    pending_polls: int = 0  # answer 202 this many times before issuing (approval-gated project)
    ttl: float = 3600.0
    refuse: tuple[int, str] | None = None  # (status, error code) for every agent POST
    retry_after: float | None = None
    #: The heartbeat period the portal names; None leaves it out (the reporter keeps its own, fast period).
    next_heartbeat_s: int | None = None
    #: STUN/TURN: the config's servers, and the secret and lifetime of the TURN grants in join/renew replies.
    ice_servers: list[IceServerSpec] = field(default_factory=list)
    turn_secret: str = ""
    turn_ttl: float = 3600.0
    #: The answer to `export/latest`: the body and headers sent as they are (None: 404 no_export).
    export: tuple[bytes, dict[str, str]] | None = None
    #: A language-model project (task `lm`): its shape; one `grid` named `lm.b<k>` per block.
    lm: LMSpec | None = None


class LocalPortal:
    def __init__(self, port: int = 0) -> None:
        self.identity = Identity.generate()
        self.behaviour = PortalBehaviour()
        self.heartbeats: list[dict[str, Any]] = []
        self.metrics: list[dict[str, Any]] = []
        self.joins: list[str] = []
        self.renewals: list[str] = []
        self.requests = 0
        self.export_fetches = 0
        self.issued: dict[str, str] = {}  # cid -> node public key hex
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.port = port or free_port()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def project_config(self) -> ProjectConfig:
        b = self.behaviour
        if b.lm is not None:
            grids = [
                ExpertSpec(hidden_dim=b.hidden_dim, grid=list(b.grid), prefix=f"lm.b{block}")
                for block in range(b.lm.blocks)
            ]
        else:
            grids = [ExpertSpec(hidden_dim=b.hidden_dim, grid=list(b.grid), prefix="ffn")]
        return ProjectConfig(
            project=b.project,
            title="Demo",
            dht_prefix=b.project,
            bootstrap_peers=list(b.bootstrap_peers),
            portal_public_key=self.identity.public_key_bytes.hex(),
            gated=b.gated,
            expert=grids[0],
            grids=grids if b.lm is not None else [],
            task="lm" if b.lm is not None else "classification",
            lm=b.lm,
            ice_servers=list(b.ice_servers),
        )

    def turn_grant(self, public_key: bytes) -> TurnGrant | None:
        b = self.behaviour
        if not b.turn_secret:
            return None
        node_id = node_id_from_public_key(public_key).hex()
        return issue_turn_grant(b.turn_secret, node_id, now=time.time(), ttl=b.turn_ttl)

    def config(self) -> dict[str, Any]:
        return project_config_to_dict(self.project_config())

    def credential_for(self, public_key: bytes, now: float | None = None, ttl: float | None = None) -> str:
        cid = uuid.uuid4().hex
        self.issued[cid] = public_key.hex()
        return issue_credential(
            self.identity,
            cid=cid,
            project=self.behaviour.project,
            user=7,
            node_public_key=public_key,
            now=time.time() if now is None else now,
            ttl=self.behaviour.ttl if ttl is None else ttl,
        )

    # ---- request handling (called from the server threads) ----------------------------------------

    def handle(
        self, method: str, path: str, raw: bytes, headers: dict[str, str]
    ) -> tuple[int, dict | bytes, dict]:
        with self._lock:
            self.requests += 1
        b = self.behaviour
        if method == "GET" and path == f"/api/v1/projects/{b.project}/config":
            return 200, self.config(), {}
        if method != "POST" or not path.startswith("/api/v1/agent/"):
            return _error(404, "not_found", path)
        if b.refuse is not None:
            status, code = b.refuse
            status, data, _ = _error(status, code, "test portal refuses")
            return status, data, {"Retry-After": str(b.retry_after)} if b.retry_after is not None else {}
        try:
            public_key, body = verify_body(raw, headers, now=time.time())
            return self._agent_call(path.rsplit("/", 1)[1], public_key, body)
        except ProtocolError as exc:
            return _error(400, exc.reason, exc.detail)

    def _check(self, token: str, public_key: bytes) -> None:
        verify_credential(
            token,
            portal_public_key=self.identity.public_key_bytes,
            now=time.time(),
            project=self.behaviour.project,
            node_public_key=public_key,
        )

    def _agent_call(self, name: str, public_key: bytes, body: dict) -> tuple[int, dict | bytes, dict]:
        b = self.behaviour
        if name == "join":
            request = validate_join(body)
            if request.code not in b.codes:
                return _error(409, "code_used", "unknown or used code")
            if b.pending_polls > 0:
                b.pending_polls -= 1
                return 202, reply_to_builtins(PendingReply(status="pending_approval")), {}
            b.codes.discard(request.code)
            self.joins.append(public_key.hex())
            node = JoinedNode(
                node_id=node_id_from_public_key(public_key).hex(), state="registered", project=b.project
            )
            reply = JoinReply(
                credential=self.credential_for(public_key),
                expires_at=time.time() + b.ttl,
                node=node,
                config=self.project_config(),
                turn=self.turn_grant(public_key),
            )
            return 201, reply_to_builtins(reply), {}
        if name == "renew":
            request = validate_renew(body)
            self._check(request.credential, public_key)
            self.renewals.append(public_key.hex())
            renewed = RenewReply(
                credential=self.credential_for(public_key),
                expires_at=time.time() + b.ttl,
                turn=self.turn_grant(public_key),
            )
            return 201, reply_to_builtins(renewed), {}
        if name == "heartbeat":
            heartbeat = validate_heartbeat(body)
            self._check(heartbeat.credential, public_key)
            with self._lock:
                self.heartbeats.append(body)
            period = b.next_heartbeat_s if b.next_heartbeat_s is not None else 0
            answer = reply_to_builtins(HeartbeatReply(status="ok", state="online", next_heartbeat_s=period))
            if b.next_heartbeat_s is None:
                del answer["next_heartbeat_s"]
            return 202, answer, {}
        if name == "metrics":
            report = validate_metrics(body)
            self._check(report.credential, public_key)
            with self._lock:
                self.metrics.extend(body["metrics"])
            return 202, reply_to_builtins(MetricsReply(status="ok", stored=len(report.metrics))), {}
        if name == "latest":  # export/latest: this portal never holds an export
            fetch = validate_export_fetch(body)
            self._check(fetch.credential, public_key)
            with self._lock:
                self.export_fetches += 1
            if b.export is None:
                return _error(404, "no_export", "the project has no export yet")
            return 200, b.export[0], b.export[1]
        return _error(404, "not_found", name)

    # ---- lifecycle -------------------------------------------------------------------------------------

    def start(self) -> LocalPortal:
        portal = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                status, data, extra = portal.handle(self.command, self.path, raw, dict(self.headers.items()))
                if isinstance(data, bytes):  # a file, with the headers the test chose (Content-Length too)
                    payload, kind = data, "application/octet-stream"
                else:
                    payload, kind = json.dumps(data).encode(), "application/json"
                    extra = {"Content-Length": str(len(payload)), **extra}
                self.send_response(status)
                self.send_header("Content-Type", kind)
                for key, value in extra.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = _serve

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(  # a short poll interval: stop() returns within it
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Go away: the port refuses connections afterwards (until `start()` again)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

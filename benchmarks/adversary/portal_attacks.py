"""Portal attacks of issue 11, items 9-11, over real HTTP against a running Daphne.

Signed bodies come from `node_agent.portal.signed_body.sign_body`; where an attack needs bytes that no honest
agent would produce (8,000 nested lists, a 400-digit timestamp) the raw bytes are signed with the same
domain-separated key signature, so the portal's parsers (not the signature check) meet them.
`setup` runs the Django ORM synchronously before the attacks; the attacks themselves only speak HTTP.
"""

from __future__ import annotations

import secrets
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from node_agent.identity import Identity
from node_agent.portal.signed_body import BODY_DOMAIN, NODE_HEADER, SIGNATURE_HEADER, sign_body

AGENT_ENDPOINTS = ("join", "renew", "heartbeat", "metrics")
HUGE_GRID = "1024x1024x1024x1024"


@dataclass
class PortalTargets:
    base: str
    approval_slug: str = ""
    secret_markers: list[str] = field(default_factory=list)  # what the public must never see
    node: Any = None  # a joined SimulatedNode of an open project (signed heartbeats and metrics)
    grid_slug: str | None = None  # the big-grid project, if the portal let it be created
    grid_notes: dict[str, Any] = field(default_factory=dict)


def http(
    url: str, data: bytes | None = None, headers: dict[str, str] | None = None, timeout: float = 30.0
) -> tuple[int, bytes, float]:
    """(status, body, seconds); status 0 when no HTTP answer came (refused, reset or timed out)."""
    request = urllib.request.Request(url, data=data, headers=headers or {}, method="POST" if data else "GET")
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read(), time.perf_counter() - started
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), time.perf_counter() - started
    except OSError:
        return 0, b"", time.perf_counter() - started


def signed_raw(identity: Identity, raw: bytes) -> dict[str, str]:
    """Headers signing `raw` exactly as `sign_body` signs its JSON."""
    return {
        "Content-Type": "application/json",
        NODE_HEADER: identity.public_key_bytes.hex(),
        SIGNATURE_HEADER: identity.sign(BODY_DOMAIN + raw).hex(),
    }


def setup(base: str, grid: str) -> PortalTargets:
    """Projects and nodes the attacks need (call after `django.setup()`, with Daphne serving `base`)."""
    from django.utils import timezone
    from live_agents import SimulatedNode, http_poster

    from accounts.models import Role, User
    from projects import services as project_services
    from projects.catalog import parse_grid_shape
    from swarm import services as swarm_services
    from swarm.models import Node

    owner = User.objects.create_user(
        "adv-owner@example.org", "x" * 12, display_name="Owner", role=Role.RESEARCHER
    )
    volunteer = User.objects.create_user("adv-volunteer@example.org", "x" * 12, display_name="Volunteer")

    def project(slug: str, shape: str, policy: str) -> Any:
        return project_services.project_create(
            owner=owner, launch=True, title=slug, slug=slug, description="", expert_architecture="ffn",
            hidden_size=16, grid_shape=shape, optimizer="adam", learning_rate=0.001, dataset="digits",
            join_policy=policy,
        )  # fmt: skip

    open_project = project("adv-open", "4x4", "open")
    gated = project("adv-approval", "4x4", "approval")
    post = http_poster(base, timeout=30)
    targets = PortalTargets(base, approval_slug=gated.slug)
    code = swarm_services.join_code_create(project=open_project, user=volunteer, now=timezone.now())[1]
    targets.node = SimulatedNode(post=post).join(code)

    hidden = SimulatedNode(post=post)  # a volunteer of the approval-only project, approved, heartbeating
    code = swarm_services.join_code_create(project=gated, user=volunteer, now=timezone.now())[1]
    hidden._send(
        "/api/v1/agent/join", {"code": code, "agent_version": "0.1.0", "platform": "linux-secret-os"}
    )
    node = Node.objects.get(project=gated, public_key=hidden.identity.public_key_bytes.hex())
    swarm_services.node_approve(node=node, actor=owner, now=timezone.now())
    payload = hidden._send(
        "/api/v1/agent/join", {"code": code, "agent_version": "0.1.0", "platform": "linux-secret-os"}
    )
    hidden.credential, hidden.node_id = payload["credential"], payload["node"]["node_id"]
    hidden.heartbeat(experts=["ffn.0.0"])
    targets.secret_markers = [hidden.node_id, "linux-secret-os", "linux-test", "127.0.0.1:40000"]

    for shape in (HUGE_GRID, grid):  # what a researcher may create; only `grid` is ever fetched
        try:
            parse_grid_shape(shape)
            created = project(f"adv-grid-{len(shape)}", shape, "open")
            targets.grid_notes[shape] = "created"
            if shape == grid:
                targets.grid_slug = created.slug
        except Exception as exc:
            targets.grid_notes[shape] = f"refused: {type(exc).__name__}: {exc}"[:160]
    return targets


def nested_json(targets: PortalTargets) -> dict[str, Any]:
    identity = Identity.generate()
    raw = b"[" * 8000 + b"]" * 8000
    return _post_all(targets, lambda: (raw, signed_raw(identity, raw)))


def huge_ts(targets: PortalTargets) -> dict[str, Any]:
    identity = Identity.generate()
    raw = b'{"nonce":"' + secrets.token_hex(16).encode() + b'","ts":1' + b"0" * 400 + b"}"
    return _post_all(targets, lambda: (raw, signed_raw(identity, raw)))


def _post_all(targets: PortalTargets, make: Any) -> dict[str, Any]:
    statuses = {}
    for name in AGENT_ENDPOINTS:
        raw, headers = make()
        statuses[name] = http(f"{targets.base}/api/v1/agent/{name}", raw, headers)[0]
    return {
        "sent": len(statuses),
        "statuses": list(statuses.values()),
        "notes": {"status_by_endpoint": statuses},
    }


def counter_overflow(targets: PortalTargets) -> dict[str, Any]:
    node = targets.node
    big = 2**63
    heartbeat = {
        "credential": node.credential, "node_id": node.node_id, "endpoint": "127.0.0.1:40001",
        "agent_version": "0.1.0", "platform": "linux", "role": "server", "experts": [],
        "requests": big, "samples": big + 5, "failures": big, "bytes_in": big, "bytes_out": 2**64,
        "samples_per_s": 1.0, "uptime_s": 1.0, "peers": [],
    }  # fmt: skip
    metric = {"step": big, "loss": 1.0, "accuracy": 0.5, "samples_per_s": 1.0, "experts_answered": big,
              "experts_failed": 0, "timestamp": time.time()}  # fmt: skip
    metrics = {"credential": node.credential, "node_id": node.node_id, "metrics": [metric]}
    statuses = {}
    for name, body in (("heartbeat", heartbeat), ("metrics", metrics)):
        raw, headers = sign_body(node.identity, body, time.time())
        statuses[name] = http(f"{targets.base}/api/v1/agent/{name}", raw, headers)[0]
    return {"sent": 2, "statuses": list(statuses.values()), "notes": {"status_by_endpoint": statuses}}


def anonymous_access(targets: PortalTargets) -> dict[str, Any]:
    """Anonymous reads of an approval-only project; a leak is any of its volunteer's details in a 200."""
    slug = targets.approval_slug
    paths = [f"/api/v1/projects/{slug}/nodes", f"/api/v1/projects/{slug}/swarm", f"/projects/{slug}/swarm/"]
    statuses, leaks = {}, {}
    for path in paths:
        status, body, _ = http(targets.base + path)
        statuses[path] = status
        text = body.decode(errors="replace")
        leaks[path] = [m for m in targets.secret_markers if status == 200 and m in text]
    leaked = sorted({m for found in leaks.values() for m in found})
    return {"sent": len(paths), "statuses": list(statuses.values()),
            "notes": {"status_by_path": statuses, "leaked": leaked}}  # fmt: skip


def huge_grid(targets: PortalTargets, requests: int, rss: Any) -> dict[str, Any]:
    """Anonymous GETs of the big-grid project's swarm API (if the portal let it be created)."""
    notes: dict[str, Any] = {"creation": targets.grid_notes}
    if targets.grid_slug is None:
        return {"sent": 0, "statuses": [], "notes": notes}
    before = rss()
    statuses, seconds, sizes = [], [], []
    for _ in range(requests):
        status, body, took = http(f"{targets.base}/api/v1/projects/{targets.grid_slug}/swarm", timeout=60)
        statuses.append(status)
        seconds.append(round(took, 2))
        sizes.append(len(body))
    notes |= {"seconds": seconds, "response_bytes": sizes, "portal_rss_growth_mb": round(rss() - before, 1)}
    return {"sent": requests, "statuses": statuses, "notes": notes}


def healthy(base: str) -> bool:
    return http(f"{base}/healthz", timeout=10)[0] == 200

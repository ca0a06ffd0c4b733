"""The OpenAPI 3.1 description of /api/v1/, served at /api/v1/openapi.json and rendered at /api/docs/.

Written by hand next to the views it documents; a test checks every documented path resolves to a view.
"""

from __future__ import annotations

from typing import Any

from node_agent import __version__
from node_agent.portal.schemas import MAX_COUNTER, MAX_METRICS_PER_BODY, MAX_SMALL_COUNT
from node_agent.portal.signed_body import MAX_BODY_BYTES, MAX_JSON_DEPTH, NODE_HEADER, SIGNATURE_HEADER
from swarm.selectors import CELLS_PAGE, HOLES_PAGE, NODES_PAGE

_ERROR = {
    "type": "object",
    "required": ["error", "detail"],
    "properties": {
        "error": {"type": "string", "description": "machine code, e.g. code_expired, replayed, rate_limited"},
        "detail": {"type": "string", "description": "what was wrong, for humans"},
    },
}
_SIGNED = {
    "ts": {"type": "number", "description": "unix time; refused when more than 60 s off the portal clock"},
    "nonce": {"type": "string", "pattern": "^[0-9a-fA-F]{16,64}$", "description": "never reused"},
}
_NODE_ID = {"type": "string", "pattern": "^[0-9a-f]{40}$"}
_COUNT = {"type": "integer", "minimum": 0, "maximum": MAX_COUNTER}
_SMALL_COUNT = {"type": "integer", "minimum": 0, "maximum": MAX_SMALL_COUNT}
_PAGE_SIZES = {"nodes_": NODES_PAGE, "cells_": CELLS_PAGE, "holes_": HOLES_PAGE, "": NODES_PAGE}


def _paging(*prefixes: str) -> list[dict[str, Any]]:
    """`<prefix>offset` and `<prefix>limit` query parameters (limits above the largest are clamped)."""
    parameters = []
    for prefix in prefixes:
        default, largest = _PAGE_SIZES[prefix]
        parameters += [
            {"name": f"{prefix}offset", "in": "query", "schema": {"type": "integer", "minimum": 0}},
            {
                "name": f"{prefix}limit",
                "in": "query",
                "schema": {"type": "integer", "minimum": 0, "maximum": largest, "default": default},
            },
        ]
    return parameters


def _obj(required: list[str], properties: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "required": required, "properties": properties, "additionalProperties": False}


def _errors(*codes: int) -> dict[str, Any]:
    texts = {
        400: f"malformed body (JSON nested deeper than {MAX_JSON_DEPTH}), invalid field, unknown code",
        401: "bad signature, stale timestamp or invalid credential",
        403: "banned node or user, revoked credential",
        404: "no such project",
        409: "replayed body, used code, project not active",
        410: "join code expired",
        413: f"body larger than {MAX_BODY_BYTES} bytes",
        429: "rate limited; see the Retry-After header",
    }
    return {
        str(code): {
            "description": texts[code],
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
        }
        for code in codes
    }


def _signed_post(summary: str, description: str, body: dict[str, Any], ok: dict[str, Any]) -> dict[str, Any]:
    return {
        "post": {
            "summary": summary,
            "description": description,
            "security": [{"nodeSignature": []}],
            "parameters": [
                {"name": NODE_HEADER, "in": "header", "required": True, "schema": {"type": "string"}},
                {"name": SIGNATURE_HEADER, "in": "header", "required": True, "schema": {"type": "string"}},
            ],
            "requestBody": {"required": True, "content": {"application/json": {"schema": body}}},
            "responses": {**ok, **_errors(400, 401, 403, 409, 413)},
        }
    }


def _json(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _get(
    summary: str, description: str, schema: dict[str, Any], query: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    slug = {"name": "slug", "in": "path", "required": True, "schema": {"type": "string"}}
    return {
        "get": {
            "summary": summary,
            "description": description,
            "parameters": [slug, *(query or [])],
            "responses": {"200": _json("OK", schema), **_errors(*((400, 404) if query else (404,)))},
        }
    }


def openapi_schema(*, server_url: str) -> dict[str, Any]:
    heartbeat = _obj(
        ["credential", "node_id", "endpoint", "agent_version", "platform", "role", "experts", "requests",
         "samples", "failures", "bytes_in", "bytes_out", "samples_per_s", "uptime_s", "peers", "ts", "nonce"],
        {
            "credential": {"type": "string"},
            "node_id": _NODE_ID,
            "endpoint": {"type": "string", "description": "the node's DHT address, host:port"},
            "agent_version": {"type": "string"},
            "platform": {"type": "string"},
            "role": {"enum": ["server", "trainer"]},
            "experts": {"type": "array", "items": {"type": "string"}, "description": "uids served"},
            **{name: _COUNT for name in ("requests", "samples", "failures", "bytes_in", "bytes_out")},
            "samples_per_s": {"type": "number", "minimum": 0},
            "uptime_s": {"type": "number", "minimum": 0},
            "peers": {
                "type": "array",
                "items": _obj(["node_id", "requests"], {"node_id": _NODE_ID, "requests": _COUNT}),
            },
            **_SIGNED,
        },
    )  # fmt: skip
    metric = _obj(
        ["step", "loss", "accuracy", "samples_per_s", "experts_answered", "experts_failed", "timestamp"],
        {
            "step": _SMALL_COUNT,
            "loss": {"type": "number"},
            "accuracy": {"type": "number", "minimum": 0, "maximum": 1},
            "samples_per_s": {"type": "number", "minimum": 0},
            "experts_answered": _SMALL_COUNT,
            "experts_failed": _SMALL_COUNT,
            "timestamp": {"type": "number"},
            "kind": {"enum": ["train", "eval"]},
        },
    )
    config = {
        "type": "object",
        "properties": {
            "project": {"type": "string"},
            "title": {"type": "string"},
            "status": {"type": "string"},
            "dht_prefix": {"type": "string"},
            "bootstrap_peers": {"type": "array", "items": {"type": "string"}, "description": "host:port/id"},
            "portal_public_key": {"type": "string", "description": "Ed25519 public key, hex"},
            "gated": {"type": "boolean"},
            "expert": {"type": "object"},
            "training": {"type": "object"},
            "agent": {"type": "object", "properties": {"version": {}, "wheel_url": {}, "sha256": {}}},
        },
    }
    signed_note = (
        f"The body is JSON signed with the node's Ed25519 key; headers {NODE_HEADER} (public key hex) and "
        f"{SIGNATURE_HEADER} (signature hex). At most {MAX_BODY_BYTES} bytes."
    )
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Colearn portal API",
            "version": f"v1 (agent {__version__})",
            "description": "Agent endpoints (signed telemetry, join, renew) and read-only swarm state.",
        },
        "servers": [{"url": server_url}],
        "components": {
            "schemas": {"Error": _ERROR, "ProjectConfig": config},
            "securitySchemes": {
                "nodeSignature": {"type": "apiKey", "in": "header", "name": SIGNATURE_HEADER},
            },
        },
        "paths": {
            "/api/v1/projects/{slug}/config": _get(
                "Project config for agents",
                "DHT prefix, bootstrap peers, expert grid, hyperparameters, the portal key, the agent wheel.",
                {"$ref": "#/components/schemas/ProjectConfig"},
            ),
            "/api/v1/projects/{slug}/swarm": _get(
                "Swarm state",
                "Counts of nodes per state and one page of nodes with state and freshness; coverage as "
                "counts (total, covered, holes), one page of covered cells with their replicas and one "
                "page of holes (from the DHT); recent metrics. Visible like the swarm page: open projects "
                "to anyone, approval projects to members, drafts to the owner. A node's endpoint and "
                "platform only for its volunteer and staff.",
                {"type": "object"},
                _paging("nodes_", "cells_", "holes_"),
            ),
            "/api/v1/projects/{slug}/nodes": _get(
                "Nodes of a project",
                "One page of nodes and their state (same visibility as the swarm state).",
                {"type": "object"},
                _paging(""),
            ),
            "/api/v1/agent/join": _signed_post(
                "Trade a join code for a credential",
                signed_note + " 202 while an approval-gated project's owner has not approved the node; "
                "poll with the same code.",
                _obj(
                    ["code", "agent_version", "platform", "ts", "nonce"],
                    {
                        "code": {"type": "string"},
                        "agent_version": {"type": "string"},
                        "platform": {"type": "string"},
                        **_SIGNED,
                    },
                ),
                {
                    "201": _json(
                        "credential issued",
                        {
                            "type": "object",
                            "properties": {
                                "credential": {"type": "string"},
                                "expires_at": {"type": "number"},
                                "node": {"type": "object"},
                                "config": {"$ref": "#/components/schemas/ProjectConfig"},
                            },
                        },
                    ),
                    "202": _json("pending approval", {"type": "object"}),
                    **_errors(410, 429),
                },
            ),
            "/api/v1/agent/renew": _signed_post(
                "Renew a credential",
                signed_note + " Refused for banned nodes and revoked credentials.",
                _obj(["credential", "ts", "nonce"], {"credential": {"type": "string"}, **_SIGNED}),
                {"201": _json("new credential", {"type": "object"}), **_errors(429)},
            ),
            "/api/v1/agent/heartbeat": _signed_post(
                "Report a heartbeat",
                signed_note + " Stored only if every check passes.",
                heartbeat,
                {"202": _json("accepted", {"type": "object"}), **_errors(429)},
            ),
            "/api/v1/agent/metrics": _signed_post(
                "Report training metrics",
                signed_note + f" At most {MAX_METRICS_PER_BODY} points per body.",
                _obj(
                    ["credential", "node_id", "metrics", "ts", "nonce"],
                    {
                        "credential": {"type": "string"},
                        "node_id": _NODE_ID,
                        "metrics": {"type": "array", "items": metric, "maxItems": MAX_METRICS_PER_BODY},
                        **_SIGNED,
                    },
                ),
                {"202": _json("accepted", {"type": "object"}), **_errors(429)},
            ),
        },
    }

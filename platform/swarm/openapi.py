"""The OpenAPI 3.1 description of /api/v1/, served at /api/v1/openapi.json and rendered at /api/docs/.

The schemas are generated (`msgspec.json.schema_components`) from the structs both sides use
(`node_agent.portal.schemas`, `node_agent.portal.project_config`) and from the swarm answers' shapes
(`swarm.api_types`), limits included, so the description cannot drift from what is checked and served.
Only the paths, their parameters and status codes are written here; tests check that every documented
path resolves to a view and every /api/v1/ route is documented.
"""

from __future__ import annotations

from typing import Any

import msgspec

from credit.exports import FILES as CREDIT_FILES
from node_agent import __version__
from node_agent.portal.project_config import ProjectConfig
from node_agent.portal.schemas import (
    EXPORT_HEADER,
    EXPORT_SHA256_HEADER,
    MAX_METRICS_PER_BODY,
    ErrorReply,
    ExportFetch,
    ExportUpload,
    Heartbeat,
    HeartbeatReply,
    JoinReply,
    JoinRequest,
    MetricsReply,
    MetricsReport,
    PendingReply,
    RenewReply,
    RenewRequest,
)
from node_agent.portal.signed_body import (
    MAX_BODY_BYTES,
    MAX_CLOCK_SKEW,
    MAX_JSON_DEPTH,
    NODE_HEADER,
    SIGNATURE_HEADER,
)
from swarm.api_types import NodesReply, SwarmState
from swarm.selectors import CELLS_PAGE, HOLES_PAGE, NODES_PAGE

REF = "#/components/schemas/{name}"
#: Every type the API reads or answers; their components are generated together (shared parts once).
DOCUMENTED_TYPES: tuple[Any, ...] = (
    ErrorReply,
    ProjectConfig,
    JoinRequest,
    JoinReply,
    PendingReply,
    RenewRequest,
    RenewReply,
    Heartbeat,
    HeartbeatReply,
    ExportUpload,
    ExportFetch,
    MetricsReport,
    MetricsReply,
    SwarmState,
    NodesReply,
)
_PAGE_SIZES = {"nodes_": NODES_PAGE, "cells_": CELLS_PAGE, "holes_": HOLES_PAGE, "": NODES_PAGE}


#: The answer of POST /api/v1/agent/join-check (a usable code: ok, project; else ok=false and error).
JOIN_CHECK_REPLY: dict[str, Any] = {
    "type": "object",
    "required": ["ok", "detail"],
    "additionalProperties": False,
    "properties": {
        "ok": {"type": "boolean"},
        "project": {"type": "string"},
        "error": {"type": "string"},
        "detail": {"type": "string"},
    },
}


def schema_components() -> dict[str, Any]:
    """The `components.schemas` of the description, generated from :data:`DOCUMENTED_TYPES`."""
    _, components = msgspec.json.schema_components(DOCUMENTED_TYPES, ref_template=REF)
    return components


def _ref(kind: Any) -> dict[str, str]:
    return {"$ref": REF.format(name=kind.__name__)}


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


def _json(description: str, kind: Any) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(kind)}}}


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
        503: "the portal's database is busy; retry after Retry-After",
    }
    return {str(code): _json(texts[code], ErrorReply) for code in codes}


def _signed_post(summary: str, description: str, body: Any, ok: dict[str, Any]) -> dict[str, Any]:
    return {
        "post": {
            "summary": summary,
            "description": description,
            "security": [{"nodeSignature": []}],
            "parameters": [
                {"name": NODE_HEADER, "in": "header", "required": True, "schema": {"type": "string"}},
                {"name": SIGNATURE_HEADER, "in": "header", "required": True, "schema": {"type": "string"}},
            ],
            "requestBody": {"required": True, "content": {"application/json": {"schema": _ref(body)}}},
            "responses": {**ok, **_errors(400, 401, 403, 409, 413, 429, 503)},
        }
    }


def _get(
    summary: str, description: str, kind: Any, query: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    slug = {"name": "slug", "in": "path", "required": True, "schema": {"type": "string"}}
    return {
        "get": {
            "summary": summary,
            "description": description,
            "parameters": [slug, *(query or [])],
            "responses": {"200": _json("OK", kind), **_errors(*((400, 404) if query else (404,)))},
        }
    }


def openapi_schema(*, server_url: str) -> dict[str, Any]:
    signed_note = (
        f"The body is JSON signed with the node's Ed25519 key; headers {NODE_HEADER} (public key hex) and "
        f"{SIGNATURE_HEADER} (signature hex). At most {MAX_BODY_BYTES} bytes; ts within "
        f"{MAX_CLOCK_SKEW:.0f} s of the portal clock; a nonce is never accepted twice."
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
            "schemas": schema_components(),
            "securitySchemes": {
                "nodeSignature": {"type": "apiKey", "in": "header", "name": SIGNATURE_HEADER},
            },
        },
        "paths": {
            "/api/v1/openapi.json": {
                "get": {
                    "summary": "This description",
                    "description": "The OpenAPI 3.1 description of the API, as JSON.",
                    "responses": {
                        "200": {
                            "description": "OpenAPI 3.1",
                            "content": {"application/json": {"schema": {"type": "object"}}},
                        }
                    },
                }
            },
            "/api/v1/projects/{slug}/config": _get(
                "Project config for agents",
                "DHT prefix, bootstrap peers, expert grid, hyperparameters, the portal key, the agent wheel.",
                ProjectConfig,
            ),
            "/api/v1/projects/{slug}/swarm": _get(
                "Swarm state",
                "Counts of nodes per state and one page of nodes with state and freshness; how many "
                "nodes are announced in the DHT, reachable (the observer's probe opened a connection) and "
                "serving (its `info` calls answered), each node's probe outcome (`reach`, `probed_at`, "
                "`probe_reason`); coverage of every grid (a language model's blocks one after another) as "
                "counts (total, covered, announced, holes), one page of "
                "covered cells with their serving replicas and one page of holes (a cell is covered only "
                "by a serving node); recent metrics. Visible like the swarm page: open projects "
                "to anyone, approval projects to members, drafts to the owner. A node's endpoint and "
                "platform only for its volunteer and staff.",
                SwarmState,
                _paging("nodes_", "cells_", "holes_"),
            ),
            "/api/v1/projects/{slug}/nodes": _get(
                "Nodes of a project",
                "One page of nodes and their state (same visibility as the swarm state).",
                NodesReply,
                _paging(""),
            ),
            "/api/v1/agent/join": _signed_post(
                "Trade a join code for a credential",
                signed_note + " 202 while an approval-gated project's owner has not approved the node; "
                "poll with the same code.",
                JoinRequest,
                {
                    "201": _json("credential issued", JoinReply),
                    "202": _json("pending approval", PendingReply),
                    **_errors(410),
                },
            ),
            "/api/v1/agent/join-check": {
                "post": {
                    "summary": "Check a join code before installing the agent",
                    "description": "The body is the join code as plain text (at most 64 bytes; unsigned: no "
                    "node key exists yet). Always 200 with `ok` and a `detail` for the volunteer (the Join "
                    "command prints it and stops when `ok` is false); a usable code then stays valid for "
                    "JOIN_CODE_INSTALL_GRACE after the check. Counted against the join attempts per address.",
                    "requestBody": {
                        "required": True,
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    "responses": {
                        "200": {
                            "description": "the verdict",
                            "content": {"application/json": {"schema": JOIN_CHECK_REPLY}},
                        },
                        **_errors(429, 503),
                    },
                }
            },
            "/api/v1/agent/renew": _signed_post(
                "Renew a credential",
                signed_note + " Refused for banned nodes and revoked credentials.",
                RenewRequest,
                {"201": _json("new credential", RenewReply)},
            ),
            "/api/v1/credit/leaderboard": {
                "get": {
                    "summary": "Credit leaderboard",
                    "description": "Users and teams by credit (GFLOPs priced by the portal from verified "
                    "receipts), with their recent average credit (one-week half-life); one project's: "
                    "?project=<slug>.",
                    "parameters": [
                        {"name": "project", "in": "query", "required": False, "schema": {"type": "string"}}
                    ],
                    "responses": {
                        "200": {"description": "ranked users; names only for those who opted in"},
                        "404": {"description": "no such project"},
                    },
                }
            },
            "/api/v1/credit/stats/{name}": {
                "get": {
                    "summary": "Daily stats export",
                    "description": "Daily export: user.json, team.json, host.json, and BOINC-style XML "
                    "user.gz (<users><user><id/><name/><total_credit/><expavg_credit/><expavg_time/>) and "
                    "team.gz (<teams><team><id/><name/><nusers/>...) and "
                    "host.gz (<hosts><host><id/><userid/><project/><total_credit/>...)",
                    "parameters": [
                        {
                            "name": "name",
                            "in": "path",
                            "required": True,
                            "schema": {"enum": list(CREDIT_FILES)},
                        }
                    ],
                    "responses": {
                        "200": {"description": "the file of the last export"},
                        "404": {"description": "unknown file, or no export has run yet"},
                    },
                }
            },
            "/api/v1/agent/heartbeat": _signed_post(
                "Report a heartbeat",
                signed_note + " Stored only if every check passes.",
                Heartbeat,
                {"202": _json("accepted", HeartbeatReply)},
            ),
            "/api/v1/agent/metrics": _signed_post(
                "Report training metrics",
                signed_note + f" At most {MAX_METRICS_PER_BODY} points per body.",
                MetricsReport,
                {"202": _json("accepted", MetricsReply)},
            ),
            "/api/v1/agent/export/latest": {
                "post": {
                    "summary": "Download the project's latest model export (a member node)",
                    "description": signed_note + " The signed `ExportFetch` names the node's project; a "
                    "node of another project is refused (403 `not_member`). The body of the 200 is the "
                    "safetensors file the owner's agent uploaded last, streamed, with its sha256 (hex) in "
                    f"the `{EXPORT_SHA256_HEADER}` header: the agent checks it, and that the file is "
                    "safetensors, before a takeover with no live replica starts a cell from it. Limited "
                    "per node key (RATE_EXPORT_FETCH_PER_KEY per hour).",
                    "security": [{"nodeSignature": []}],
                    "parameters": [
                        {"name": NODE_HEADER, "in": "header", "required": True, "schema": {"type": "string"}},
                        {
                            "name": SIGNATURE_HEADER,
                            "in": "header",
                            "required": True,
                            "schema": {"type": "string"},
                        },
                    ],
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": _ref(ExportFetch)}},
                    },
                    "responses": {
                        "200": {
                            "description": "the newest export",
                            "headers": {
                                EXPORT_SHA256_HEADER: {
                                    "description": "sha256 of the body, hex",
                                    "schema": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
                                }
                            },
                            "content": {
                                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
                            },
                        },
                        "404": _json("the project has no export yet (`no_export`)", ErrorReply),
                        **_errors(400, 401, 403, 409, 413, 429, 503),
                    },
                }
            },
            "/api/v1/agent/export": {
                "post": {
                    "summary": "Upload a model export (the project owner's agent)",
                    "description": "The raw body is the safetensors file `node-agent export` wrote. The "
                    f"`{EXPORT_HEADER}` header holds the signed JSON `ExportUpload` (credential of a node "
                    "of the project's owner, sha256 and size of the body, ts, nonce); the signature headers "
                    "sign that header's bytes. Kept only if the body's size and sha256 match; the project "
                    "keeps its newest few exports, which its owner downloads from the swarm page.",
                    "security": [{"nodeSignature": []}],
                    "parameters": [
                        {"name": NODE_HEADER, "in": "header", "required": True, "schema": {"type": "string"}},
                        {
                            "name": SIGNATURE_HEADER,
                            "in": "header",
                            "required": True,
                            "schema": {"type": "string"},
                        },
                        {
                            "name": EXPORT_HEADER,
                            "in": "header",
                            "required": True,
                            "schema": _ref(ExportUpload),
                        },
                    ],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
                        },
                    },
                    "responses": {
                        "201": {"description": "stored"},
                        **_errors(400, 401, 403, 409, 413, 429, 503),
                    },
                }
            },
        },
    }

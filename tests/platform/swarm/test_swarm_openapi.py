"""The OpenAPI description: valid, complete (every /api/v1/ route, no route that does not exist) and true
(the real answers, served over the real URL map, match what it documents for their status code)."""

from __future__ import annotations

import re
import time
from typing import Any

import pytest
from django.urls import URLPattern, URLResolver, get_resolver, resolve
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate

from node_agent.identity import Identity
from projects.models import Project
from swarm.models import Node

pytestmark = pytest.mark.django_db


def api_routes(patterns: list[Any] | None = None, prefix: str = "") -> set[str]:
    """Every route of the URL map under api/v1/, written as OpenAPI paths (`<slug:slug>` -> `{slug}`)."""
    routes: set[str] = set()
    for entry in get_resolver().url_patterns if patterns is None else patterns:
        route = prefix + str(entry.pattern)
        if isinstance(entry, URLResolver):
            routes |= api_routes(entry.url_patterns, route)
        elif isinstance(entry, URLPattern) and route.startswith("api/v1/"):
            routes.add("/" + re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", route))
    return routes


@pytest.fixture
def schema(client: Any) -> dict[str, Any]:
    response = client.get("/api/v1/openapi.json")
    assert response.status_code == 200
    return response.json()


def check_documented(schema: dict[str, Any], path: str, method: str, response: Any) -> None:
    """`response` has a status code documented for `path` and a body that validates against it."""
    documented = schema["paths"][path][method]["responses"]
    status = str(response.status_code)
    what = f"{method.upper()} {path} {status}"
    assert status in documented, f"{what} is not documented (documented: {sorted(documented)})"
    body_schema = documented[status]["content"]["application/json"]["schema"]
    validator = Draft202012Validator({**body_schema, "components": schema["components"]})
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(response.json())]
    assert not errors, f"{what} breaks its documented schema: {errors}"


def test_the_description_is_valid_openapi(schema: dict[str, Any]) -> None:
    validate(schema)


def test_every_api_route_is_documented_and_every_documented_path_exists(schema: dict[str, Any]) -> None:
    documented = set(schema["paths"])
    routes = api_routes()
    assert routes, "no /api/v1/ routes found"
    assert routes == documented, f"undocumented: {routes - documented}; not served: {documented - routes}"
    for path in documented:
        assert resolve(path.replace("{slug}", "demo")).func is not None


def test_components_carry_the_limits_of_the_shared_structs(schema: dict[str, Any]) -> None:
    components = schema["components"]["schemas"]
    heartbeat = components["Heartbeat"]
    assert heartbeat["additionalProperties"] is False and {"ts", "nonce", "credential"} <= set(
        heartbeat["required"]
    )
    assert heartbeat["properties"]["requests"]["maximum"] == 2**63 - 1
    assert components["MetricsReport"]["properties"]["metrics"]["maxItems"] == 100
    accuracy = components["MetricPoint"]["properties"]["accuracy"]
    assert accuracy == {"type": "number", "minimum": 0, "maximum": 1}
    assert "pattern" in components["ProjectConfig"]["properties"]["portal_public_key"]


def test_real_answers_match_the_description(
    schema: dict[str, Any],
    client: Any,
    signed_post: Any,
    join_code: Any,
    project: Project,
    wheel_settings: Any,
    make_heartbeat: Any,
) -> None:
    node_key = Identity.generate()
    config = client.get(f"/api/v1/projects/{project.slug}/config")
    check_documented(schema, "/api/v1/projects/{slug}/config", "get", config)
    missing = client.get("/api/v1/projects/no/config")
    check_documented(schema, "/api/v1/projects/{slug}/config", "get", missing)
    agent = {"agent_version": "0.1.0", "platform": "Linux"}
    join = signed_post("/api/v1/agent/join", node_key, {"code": join_code(project), **agent})
    check_documented(schema, "/api/v1/agent/join", "post", join)
    used = signed_post("/api/v1/agent/join", node_key, {"code": "NO-SUCH-CODE", **agent})
    check_documented(schema, "/api/v1/agent/join", "post", used)
    credential = join.json()["credential"]
    renew = signed_post("/api/v1/agent/renew", node_key, {"credential": credential})
    check_documented(schema, "/api/v1/agent/renew", "post", renew)
    heartbeat = signed_post("/api/v1/agent/heartbeat", node_key, make_heartbeat(node_key, credential))
    check_documented(schema, "/api/v1/agent/heartbeat", "post", heartbeat)
    point = {
        "step": 1, "loss": 0.5, "accuracy": 0.5, "samples_per_s": 1.0, "experts_answered": 1,
        "experts_failed": 0, "timestamp": time.time(),
    }  # fmt: skip
    metrics = {"credential": credential, "node_id": node_key.node_id.hex(), "metrics": [point]}
    stored = signed_post("/api/v1/agent/metrics", node_key, metrics)
    check_documented(schema, "/api/v1/agent/metrics", "post", stored)
    stale = signed_post("/api/v1/agent/metrics", node_key, metrics, now=time.time() - 600)
    check_documented(schema, "/api/v1/agent/metrics", "post", stale)
    assert Node.objects.count() == 1
    Node.objects.update(endpoint="127.0.0.1:1", platform="Linux")
    for path, query in (("swarm", "?nodes_limit=5&holes_limit=3"), ("nodes", "?limit=5")):
        answer = client.get(f"/api/v1/projects/{project.slug}/{path}{query}")
        check_documented(schema, f"/api/v1/projects/{{slug}}/{path}", "get", answer)
        bad = client.get(f"/api/v1/projects/{project.slug}/{path}?nodes_offset=x&offset=x")
        check_documented(schema, f"/api/v1/projects/{{slug}}/{path}", "get", bad)
    check_documented(schema, "/api/v1/openapi.json", "get", client.get("/api/v1/openapi.json"))

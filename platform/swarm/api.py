"""The JSON API under /api/v1/: agent endpoints (signed bodies) and read-only swarm state.

Views stay thin: check the signature and schema (node_agent.portal_protocol), call a service, turn an
AgentRequestError into `{"error": code, "detail": text}` with its status. Every refusal is logged.
Agent endpoints carry no cookies, so CSRF does not apply; the body signature authenticates them.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.db import OperationalError
from django.http import Http404, HttpRequest, JsonResponse
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

from node_agent.portal_protocol import (
    MAX_BODY_BYTES,
    PayloadError,
    SignedBodyError,
    validate_heartbeat,
    validate_join,
    validate_metrics,
    validate_renew,
    verify_body,
)
from projects.lifecycle import ProjectStatus
from projects.models import Project
from projects.permissions import can_view_project
from projects.selectors import project_get
from swarm import selectors, services, telemetry
from swarm.errors import AgentRequestError
from swarm.openapi import openapi_schema

logger = logging.getLogger(__name__)

_SIGNED_BODY_STATUS = {"malformed": 400, "too_large": 413, "bad_signature": 401, "stale": 401}


def portal_url(request: HttpRequest) -> str:
    """The base URL agents use to reach this portal (PORTAL_PUBLIC_URL, else the request's own host)."""
    return (settings.PORTAL_PUBLIC_URL or request.build_absolute_uri("/")).rstrip("/")


def error_response(exc: AgentRequestError) -> JsonResponse:
    response = JsonResponse({"error": exc.code, "detail": exc.detail}, status=exc.status)
    if exc.retry_after is not None:
        response["Retry-After"] = str(max(1, math.ceil(exc.retry_after)))
    return response


def _signed_body(request: HttpRequest, now: float) -> tuple[bytes, dict[str, Any]]:
    try:
        declared = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        raise AgentRequestError(400, "malformed", "Content-Length is not a number") from None
    if declared > MAX_BODY_BYTES:
        raise AgentRequestError(413, "too_large", f"bodies are limited to {MAX_BODY_BYTES} bytes")
    try:
        return verify_body(request.body, request.headers, now=now)
    except SignedBodyError as exc:
        raise AgentRequestError(_SIGNED_BODY_STATUS.get(exc.reason, 400), exc.reason, exc.detail) from None


AgentHandler = Callable[[HttpRequest, bytes, dict[str, Any]], JsonResponse]


def agent_endpoint(handler: AgentHandler) -> Callable[[HttpRequest], JsonResponse]:
    """Signed-body POST endpoint: verify, call `handler(request, public_key, body)`, map refusals."""

    @functools.wraps(handler)
    @csrf_exempt
    @require_POST
    @never_cache
    def view(request: HttpRequest) -> JsonResponse:
        try:
            public_key, body = _signed_body(request, timezone.now().timestamp())
            return handler(request, public_key, body)
        except PayloadError as exc:
            error = AgentRequestError(400, "invalid", exc.detail)
        except AgentRequestError as exc:
            error = exc
        except OperationalError as exc:  # database busy or away: the agent retries with backoff
            logger.error("database unavailable for %s: %s", request.path, exc)
            error = AgentRequestError(503, "unavailable", "the portal is busy; retry later", retry_after=5)
        logger.warning(
            "refused %s from %s: %s %s",
            request.path,
            request.META.get("REMOTE_ADDR"),
            error.code,
            error.detail[:200],
        )
        return error_response(error)

    return view


@agent_endpoint
def agent_join(request: HttpRequest, public_key: bytes, body: dict[str, Any]) -> JsonResponse:
    status, payload = services.agent_join(
        public_key=public_key, request=validate_join(body), now=timezone.now(), portal_url=portal_url(request)
    )
    return JsonResponse(payload, status=status)


@agent_endpoint
def agent_renew(request: HttpRequest, public_key: bytes, body: dict[str, Any]) -> JsonResponse:
    payload = services.agent_renew(public_key=public_key, request=validate_renew(body), now=timezone.now())
    return JsonResponse(payload, status=201)


@agent_endpoint
def agent_heartbeat(request: HttpRequest, public_key: bytes, body: dict[str, Any]) -> JsonResponse:
    node = telemetry.heartbeat_record(
        public_key=public_key, heartbeat=validate_heartbeat(body), now=timezone.now()
    )
    return JsonResponse(
        {"status": "ok", "state": node.state, "next_heartbeat_s": settings.SWARM["HEARTBEAT_INTERVAL"]},
        status=202,
    )


@agent_endpoint
def agent_metrics(request: HttpRequest, public_key: bytes, body: dict[str, Any]) -> JsonResponse:
    stored = telemetry.metrics_record(
        public_key=public_key, report=validate_metrics(body), now=timezone.now()
    )
    return JsonResponse({"status": "ok", "stored": stored}, status=202)


def _readable_project(request: HttpRequest, slug: str) -> Project:
    project = project_get(slug=slug)
    if project is None or not can_view_project(request.user, project):
        raise Http404("No such project.")
    return project


def _not_found(slug: str) -> JsonResponse:
    return JsonResponse({"error": "not_found", "detail": f"no project {slug!r}"}, status=404)


@require_GET
@never_cache
def project_config(request: HttpRequest, slug: str) -> JsonResponse:
    project = project_get(slug=slug)
    if project is None or project.status not in (ProjectStatus.ACTIVE, ProjectStatus.PAUSED):
        return _not_found(slug)
    return JsonResponse(
        selectors.project_config(project=project, portal_url=portal_url(request), now=timezone.now())
    )


@require_GET
@never_cache
def project_swarm(request: HttpRequest, slug: str) -> JsonResponse:
    try:
        project = _readable_project(request, slug)
    except Http404:
        return _not_found(slug)
    return JsonResponse(selectors.swarm_state(project=project, now=timezone.now()))


@require_GET
@never_cache
def project_nodes(request: HttpRequest, slug: str) -> JsonResponse:
    try:
        project = _readable_project(request, slug)
    except Http404:
        return _not_found(slug)
    now = timezone.now()
    nodes = [selectors.node_as_dict(n, now) for n in selectors.nodes_of_project(project=project)]
    return JsonResponse({"project": project.slug, "generated_at": now.isoformat(), "nodes": nodes})


@require_GET
def openapi(request: HttpRequest) -> JsonResponse:
    return JsonResponse(openapi_schema(server_url=portal_url(request)))

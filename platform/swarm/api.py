"""The JSON API under /api/v1/: agent endpoints (signed bodies) and read-only swarm state.

Views stay thin: check the signature and schema (`node_agent.portal.signed_body`, `.schemas`), call a
service, turn a swarm.errors refusal into `{"error": code, "detail": text}` with the status HTTP_STATUS
gives its kind. Every refusal is logged.
Agent endpoints carry no cookies, so CSRF does not apply; the body signature authenticates them.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.db import DataError, OperationalError
from django.http import FileResponse, Http404, HttpRequest, JsonResponse
from django.http.response import HttpResponseBase
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

from node_agent.portal.errors import PayloadError, SignedBodyError
from node_agent.portal.project_config import project_config_to_dict
from node_agent.portal.schemas import (
    EXPORT_HEADER,
    EXPORT_SHA256_HEADER,
    ErrorReply,
    HeartbeatReply,
    MetricsReply,
    PendingReply,
    reply_to_builtins,
    validate_export_fetch,
    validate_export_upload,
    validate_heartbeat,
    validate_join,
    validate_metrics,
    validate_renew,
)
from node_agent.portal.signed_body import MAX_BODY_BYTES, verify_body
from projects.lifecycle import ProjectStatus
from projects.models import Project
from projects.selectors import project_get
from swarm import ratelimit, selectors, services, telemetry
from swarm.errors import (
    Conflict,
    Expired,
    InvalidRequest,
    NotAuthenticated,
    NotFound,
    NotPermitted,
    RateLimited,
    SwarmRefusal,
    TooLarge,
    Unavailable,
)
from swarm.openapi import openapi_schema
from swarm.permissions import can_view_swarm

logger = logging.getLogger(__name__)

#: The one place a refusal's kind becomes an HTTP status.
HTTP_STATUS: dict[type[SwarmRefusal], int] = {
    InvalidRequest: 400,
    NotAuthenticated: 401,
    NotPermitted: 403,
    NotFound: 404,
    Conflict: 409,
    Expired: 410,
    TooLarge: 413,
    RateLimited: 429,
    Unavailable: 503,
}
_SIGNED_BODY_REFUSAL: dict[str, type[SwarmRefusal]] = {
    "malformed": InvalidRequest,
    "too_large": TooLarge,
    "bad_signature": NotAuthenticated,
    "stale": NotAuthenticated,
}


def portal_url(request: HttpRequest) -> str:
    """The base URL agents use to reach this portal (PORTAL_PUBLIC_URL, else the request's own host)."""
    return (settings.PORTAL_PUBLIC_URL or request.build_absolute_uri("/")).rstrip("/")


def http_status(exc: SwarmRefusal) -> int:
    """The status of a refusal's kind (its nearest listed class; 400 for an unlisted subclass)."""
    for kind in type(exc).__mro__:
        if kind in HTTP_STATUS:
            return HTTP_STATUS[kind]
    return 400


def error_response(exc: SwarmRefusal) -> JsonResponse:
    reply = ErrorReply(error=exc.code, detail=exc.detail)
    response = JsonResponse(reply_to_builtins(reply), status=http_status(exc))
    if exc.retry_after is not None:
        response["Retry-After"] = str(max(1, math.ceil(exc.retry_after)))
    return response


def _signed_body(request: HttpRequest, now: float) -> tuple[bytes, dict[str, Any]]:
    try:
        declared = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        raise InvalidRequest("malformed", "Content-Length is not a number") from None
    if declared > MAX_BODY_BYTES:
        raise TooLarge("too_large", f"bodies are limited to {MAX_BODY_BYTES} bytes")
    try:
        return verify_body(request.body, request.headers, now=now)
    except SignedBodyError as exc:
        refusal = _SIGNED_BODY_REFUSAL.get(exc.reason, InvalidRequest)
        raise refusal(exc.reason, exc.detail) from None


AgentHandler = Callable[[HttpRequest, bytes, dict[str, Any]], HttpResponseBase]


def agent_endpoint(
    *, ip_limit: str = "RATE_AGENT_PER_IP", key_limit: str | None = None
) -> Callable[[AgentHandler], Callable[[HttpRequest], HttpResponseBase]]:
    """Signed-body POST endpoint: rate limit, verify, call `handler(request, public_key, body)`, map refusals.

    The per-address limit is counted before any work; the per-key one after the signature holds, so
    nobody spends another node's budget. Bodies that break the schema, nest too deep or carry numbers
    the database cannot hold are answered 400, never 500.
    """

    def decorate(handler: AgentHandler) -> Callable[[HttpRequest], HttpResponseBase]:
        @functools.wraps(handler)
        @csrf_exempt
        @require_POST
        @never_cache
        def view(request: HttpRequest) -> HttpResponseBase:
            now = timezone.now().timestamp()
            try:
                address = str(request.META.get("REMOTE_ADDR") or "unknown")
                ratelimit.enforce("RATE_AGENT_PER_IP", address, now=now)
                if ip_limit != "RATE_AGENT_PER_IP":
                    ratelimit.enforce(ip_limit, address, now=now)
                public_key, body = _signed_body(request, now)
                if key_limit is not None:
                    ratelimit.enforce(key_limit, public_key.hex(), now=now)
                return handler(request, public_key, body)
            except PayloadError as exc:
                error: SwarmRefusal = InvalidRequest("invalid", exc.detail)
            except SwarmRefusal as exc:
                error = exc
            except DataError as exc:  # a value the schema let through but a column cannot hold
                logger.error("database refused a value for %s: %s", request.path, exc)
                error = InvalidRequest("invalid", "a value is out of range for the portal")
            except OperationalError as exc:  # database busy or away: the agent retries with backoff
                logger.error("database unavailable for %s: %s", request.path, exc)
                error = Unavailable("unavailable", "the portal is busy; retry later", retry_after=5)
            logger.warning(
                "refused %s from %s: %s %s",
                request.path,
                request.META.get("REMOTE_ADDR"),
                error.code,
                error.detail[:200],
            )
            return error_response(error)

        return view

    return decorate


@agent_endpoint(ip_limit="RATE_JOIN_PER_IP", key_limit="RATE_JOIN_PER_KEY")
def agent_join(request: HttpRequest, public_key: bytes, body: dict[str, Any]) -> JsonResponse:
    reply = services.agent_join(
        public_key=public_key, request=validate_join(body), now=timezone.now(), portal_url=portal_url(request)
    )
    return JsonResponse(reply_to_builtins(reply), status=202 if isinstance(reply, PendingReply) else 201)


#: Longest body `join_check` reads: a code is 14 characters; room for spaces and a newline.
MAX_CHECK_BODY = 64


@csrf_exempt
@require_POST
@never_cache
def join_check(request: HttpRequest) -> JsonResponse:
    """Is this join code usable now? The Join page's command asks before installing anything.

    The body is the code itself (no key exists yet to sign with). The answer is always 200 with ``ok`` and a
    ``detail`` for the volunteer, so the stdlib one-liner in the command can print it and exit 1 without a
    traceback; only rate limiting (429) and a busy database (503) use other statuses. Counted against the
    join attempts per address, since it is as good an oracle for guessing codes as joining is.
    """
    now = timezone.now()
    address = str(request.META.get("REMOTE_ADDR") or "unknown")
    try:
        ratelimit.enforce("RATE_AGENT_PER_IP", address, now=now.timestamp())
        ratelimit.enforce("RATE_JOIN_PER_IP", address, now=now.timestamp())
    except RateLimited as exc:
        logger.warning("join code checks from %s refused: %s", address, exc.detail)
        return error_response(exc)
    body = request.read(MAX_CHECK_BODY + 1)
    try:
        if len(body) > MAX_CHECK_BODY:
            raise TooLarge("too_large", f"a join code check is at most {MAX_CHECK_BODY} bytes")
        code = services.join_code_check(code=body.decode("utf-8", errors="replace"), now=now)
    except SwarmRefusal as exc:
        logger.info("join code check from %s: %s", address, exc.code)
        detail = exc.detail.replace("PORTAL_URL", portal_url(request))
        return JsonResponse({"ok": False, "error": exc.code, "detail": f"error: {detail}"})
    except OperationalError as exc:
        logger.error("database unavailable for a join code check: %s", exc)
        return error_response(Unavailable("unavailable", "the portal is busy; retry later", retry_after=5))
    minutes = max(0, int((code.expires_at - now).total_seconds() // 60))
    detail = (
        f"join code OK for project {code.project.slug} ({minutes} more minutes); installing the agent ..."
    )
    return JsonResponse({"ok": True, "project": code.project.slug, "detail": detail})


@agent_endpoint(key_limit="RATE_RENEW_PER_KEY")
def agent_renew(request: HttpRequest, public_key: bytes, body: dict[str, Any]) -> JsonResponse:
    reply = services.agent_renew(public_key=public_key, request=validate_renew(body), now=timezone.now())
    return JsonResponse(reply_to_builtins(reply), status=201)


@agent_endpoint()
def agent_heartbeat(request: HttpRequest, public_key: bytes, body: dict[str, Any]) -> JsonResponse:
    node = telemetry.heartbeat_record(
        public_key=public_key, heartbeat=validate_heartbeat(body), now=timezone.now()
    )
    period = settings.SWARM["HEARTBEAT_INTERVAL"]
    reply = HeartbeatReply(status="ok", state=node.state, next_heartbeat_s=period)
    return JsonResponse(reply_to_builtins(reply), status=202)


@agent_endpoint()
def agent_metrics(request: HttpRequest, public_key: bytes, body: dict[str, Any]) -> JsonResponse:
    stored = telemetry.metrics_record(
        public_key=public_key, report=validate_metrics(body), now=timezone.now()
    )
    return JsonResponse(reply_to_builtins(MetricsReply(status="ok", stored=stored)), status=202)


@csrf_exempt
@require_POST
@never_cache
def agent_export(request: HttpRequest) -> JsonResponse:
    """The owner's agent uploads a model export (see `swarm.exports`); the signed part is a header."""
    from swarm.exports import export_receive

    now = timezone.now()
    try:
        address = str(request.META.get("REMOTE_ADDR") or "unknown")
        ratelimit.enforce("RATE_AGENT_PER_IP", address, now=now.timestamp())
        meta = str(request.headers.get(EXPORT_HEADER) or "").encode()
        try:
            declared = int(request.META.get("CONTENT_LENGTH") or 0)
            public_key, body = verify_body(meta, request.headers, now=now.timestamp())
        except ValueError:
            raise InvalidRequest("malformed", "Content-Length is not a number") from None
        except SignedBodyError as exc:
            raise _SIGNED_BODY_REFUSAL.get(exc.reason, InvalidRequest)(exc.reason, exc.detail) from None
        upload = validate_export_upload(body)
        export = export_receive(
            public_key=public_key, upload=upload, stream=request, declared=declared, now=now
        )
    except PayloadError as exc:
        return error_response(InvalidRequest("invalid", exc.detail))
    except SwarmRefusal as exc:
        logger.warning(
            "refused an export from %s: %s %s", request.META.get("REMOTE_ADDR"), exc.code, exc.detail[:200]
        )
        return error_response(exc)
    return JsonResponse({"status": "ok", "sha256": export.sha256, "size": export.size}, status=201)


@agent_endpoint(key_limit="RATE_EXPORT_FETCH_PER_KEY")
def agent_export_latest(request: HttpRequest, public_key: bytes, body: dict[str, Any]) -> FileResponse:
    """A member node downloads its project's newest export (streamed; its sha256 in a header)."""
    from swarm.exports import export_for_member

    export, path = export_for_member(
        public_key=public_key, request=validate_export_fetch(body), now=timezone.now()
    )
    response = FileResponse(path.open("rb"), content_type="application/octet-stream")
    response[EXPORT_SHA256_HEADER] = export.sha256
    return response


def _swarm_project(request: HttpRequest, slug: str) -> Project:
    """The project whose swarm `request.user` may see (swarm.permissions), else Http404."""
    project = project_get(slug=slug)
    if project is None or not can_view_swarm(request.user, project):
        raise Http404("No such project.")
    return project


def _not_found(slug: str) -> JsonResponse:
    return error_response(NotFound("not_found", f"no project {slug!r}"))


def _page_params(request: HttpRequest, **pages: tuple[str, tuple[int, int]]) -> dict[str, int]:
    """Paging from the query string: `name=(query prefix, (default limit, largest limit))`.

    Each prefix reads `<prefix>offset` and `<prefix>limit`; a limit above the largest is clamped and a
    value that is not a small non-negative integer is refused (400).
    """
    values: dict[str, int] = {}
    for name, (prefix, (default, largest)) in pages.items():
        for suffix, fallback in (("offset", 0), ("limit", default)):
            raw = request.GET.get(f"{prefix}{suffix}", "")
            if raw and not (raw.isascii() and raw.isdigit() and len(raw) <= 15):
                raise InvalidRequest("invalid", f"{prefix}{suffix} must be a non-negative integer")
            value = int(raw) if raw else fallback
            values[f"{name}_{suffix}"] = min(value, largest) if suffix == "limit" else value
    return values


@require_GET
@never_cache
def project_config(request: HttpRequest, slug: str) -> JsonResponse:
    project = project_get(slug=slug)
    if project is None or project.status not in (ProjectStatus.ACTIVE, ProjectStatus.PAUSED):
        return _not_found(slug)
    config = selectors.project_config(project=project, portal_url=portal_url(request), now=timezone.now())
    return JsonResponse(project_config_to_dict(config))


@require_GET
@never_cache
def project_swarm(request: HttpRequest, slug: str) -> JsonResponse:
    """Counts and pages (`nodes_`, `cells_`, `holes_` + `offset`/`limit`), never every cell or node."""
    try:
        project = _swarm_project(request, slug)
        pages = _page_params(
            request,
            nodes=("nodes_", selectors.NODES_PAGE),
            cells=("cells_", selectors.CELLS_PAGE),
            holes=("holes_", selectors.HOLES_PAGE),
        )
    except Http404:
        return _not_found(slug)
    except SwarmRefusal as exc:
        return error_response(exc)
    return JsonResponse(
        selectors.swarm_state(project=project, viewer=request.user, now=timezone.now(), **pages)
    )


@require_GET
@never_cache
def project_nodes(request: HttpRequest, slug: str) -> JsonResponse:
    """One page of nodes (`offset`, `limit`); endpoint and platform only for their owner and staff."""
    try:
        project = _swarm_project(request, slug)
        page = _page_params(request, nodes=("", selectors.NODES_PAGE))
    except Http404:
        return _not_found(slug)
    except SwarmRefusal as exc:
        return error_response(exc)
    now = timezone.now()
    body = selectors.nodes_page(
        project=project, viewer=request.user, now=now, offset=page["nodes_offset"], limit=page["nodes_limit"]
    )
    return JsonResponse({"project": project.slug, "generated_at": now.isoformat(), **body})


@require_GET
def openapi(request: HttpRequest) -> JsonResponse:
    return JsonResponse(openapi_schema(server_url=portal_url(request)))

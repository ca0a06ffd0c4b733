"""Site-wide pages: the landing page and a health check for load balancers and Docker."""

from __future__ import annotations

import logging

from django.db import connection
from django.db.utils import DatabaseError
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.views.decorators.cache import never_cache

from projects.selectors import project_list_public

logger = logging.getLogger(__name__)


def home(request: HttpRequest) -> HttpResponse:
    featured = project_list_public(status="active")[:3]
    return render(request, "core/home.html", {"featured": featured})


@never_cache
def healthz(request: HttpRequest) -> JsonResponse:
    """200 when the database answers, 503 otherwise; Docker's health check polls this."""
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except DatabaseError as exc:
        logger.error("health check: database unavailable: %s", exc)
        return JsonResponse({"status": "error", "database": "unavailable"}, status=503)
    return JsonResponse({"status": "ok", "database": "ok"})

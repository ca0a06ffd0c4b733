"""Public credit API: leaderboards and the stats export files (documented in swarm.openapi)."""

from __future__ import annotations

from django.conf import settings
from django.http import FileResponse, HttpRequest, JsonResponse
from django.utils import timezone
from django.views.decorators.http import require_GET

from credit.exports import FILES
from credit.selectors import team_leaderboard, user_leaderboard
from projects.lifecycle import ProjectStatus
from projects.models import Project


@require_GET
def leaderboard(request: HttpRequest) -> JsonResponse:
    """`?project=<slug>` for one project's users; overall otherwise."""
    slug = request.GET.get("project", "")
    project = None
    if slug:
        project = Project.objects.filter(slug=slug[:100]).exclude(status=ProjectStatus.DRAFT).first()
        if project is None:
            return JsonResponse({"error": "not_found", "detail": "no such project"}, status=404)
    now = timezone.now()
    users = user_leaderboard(project=project, now=now)
    teams = team_leaderboard(project=project, now=now)
    return JsonResponse(
        {
            "project": slug or None,
            "unit": "GFLOP",
            "users": [
                {
                    "rank": rank,
                    "id": u.user_id,
                    "name": u.name,
                    "total_credit": u.total_credit,
                    "recent_average_credit": u.recent_average_credit,
                }
                for rank, u in enumerate(users, start=1)
            ],
            "teams": [
                {
                    "rank": rank,
                    "id": t.team_id,
                    "name": t.name,
                    "members": t.members,
                    "total_credit": t.total_credit,
                    "recent_average_credit": t.recent_average_credit,
                }
                for rank, t in enumerate(teams, start=1)
            ],
        }
    )


@require_GET
def stats_file(request: HttpRequest, name: str) -> FileResponse | JsonResponse:
    if name not in FILES:
        return JsonResponse({"error": "not_found", "detail": f"files: {', '.join(FILES)}"}, status=404)
    path = settings.CREDIT_STATS_DIR / name
    if not path.exists():
        return JsonResponse({"error": "not_found", "detail": "no export has run yet"}, status=404)
    content_type = "application/json" if name.endswith(".json") else "application/gzip"
    return FileResponse(path.open("rb"), content_type=content_type)

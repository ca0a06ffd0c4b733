"""Credit pages: leaderboards (overall and per project), a volunteer's own credit, public profiles."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.http import require_POST

from accounts.http import AuthenticatedHttpRequest
from accounts.models import User
from credit import selectors
from credit.models import CreditProfile, Team
from projects.lifecycle import ProjectStatus
from projects.models import Project
from swarm.charts import polyline


def leaderboard(request: HttpRequest) -> HttpResponse:
    slug = request.GET.get("project", "")[:100]
    project = None
    if slug:
        project = Project.objects.filter(slug=slug).exclude(status=ProjectStatus.DRAFT).first()
        if project is None:
            raise Http404("no such project")
    users = selectors.user_leaderboard(project=project, now=timezone.now())
    teams = selectors.team_leaderboard(project=project, now=timezone.now())
    projects = Project.objects.exclude(status=ProjectStatus.DRAFT).order_by("title")
    return render(
        request,
        "credit/leaderboard.html",
        {"users": users, "teams": teams, "project": project, "projects": projects},
    )


@login_required
def my_credit(request: AuthenticatedHttpRequest) -> HttpResponse:
    rows = selectors.user_nodes_credit(user_id=request.user.pk, now=timezone.now())
    charts = [(row, polyline(row.daily, width=240, height=40)) for row in rows]
    profile = CreditProfile.objects.filter(user=request.user).select_related("team").first()
    context = {
        "charts": charts,
        "public_name": bool(profile and profile.public_name),
        "team": profile.team if profile else None,
        "teams": Team.objects.all()[:500],
    }
    return render(request, "credit/mine.html", context)


@login_required
@require_POST
def team(request: AuthenticatedHttpRequest) -> HttpResponse:
    """Create a team (and join it), join an existing one, or leave: `action` = create | join | leave."""
    action = request.POST.get("action", "")
    chosen: Team | None = None
    if action == "create":
        name = request.POST.get("name", "").strip()[:80]
        if name:
            chosen, _ = Team.objects.get_or_create(name=name, defaults={"founder": request.user})
    elif action == "join":
        chosen = Team.objects.filter(pk=_int(request.POST.get("team"))).first()
    if action in ("create", "join") and chosen is None:
        return redirect("credit:mine")
    CreditProfile.objects.update_or_create(user=request.user, defaults={"team": chosen})
    return redirect("credit:mine")


def _int(value: str | None) -> int:
    return int(value) if value and value.isdigit() and len(value) < 12 else 0


@login_required
@require_POST
def privacy(request: AuthenticatedHttpRequest) -> HttpResponse:
    """Show my display name on leaderboards and in stats exports, or stay anonymous."""
    public = request.POST.get("public_name") == "on"
    CreditProfile.objects.update_or_create(user=request.user, defaults={"public_name": public})
    return redirect("credit:mine")


def profile(request: HttpRequest, user_id: int) -> HttpResponse:
    """A public profile: the name only if the user chose to show it, and credit per project."""
    user = User.objects.filter(pk=user_id).first()
    if user is None:
        raise Http404("no such user")
    rows = selectors.user_nodes_credit(user_id=user.pk, now=timezone.now(), days=1)
    per_project: dict[str, list[float]] = {}
    for row in rows:
        entry = per_project.setdefault(row.project_title, [0.0, 0.0])
        entry[0] += row.total_credit
        entry[1] += row.recent_average_credit
    name = user.display_name if selectors.shows_name(user.pk) else selectors.ANONYMOUS
    return render(
        request,
        "credit/profile.html",
        {"name": name, "user_id": user.pk, "projects": sorted(per_project.items())},
    )

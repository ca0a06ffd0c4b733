"""Project pages. Views stay thin: permissions, a selector or a service, a template."""

from __future__ import annotations

import logging

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseNotAllowed
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods

from accounts.http import AuthenticatedHttpRequest
from projects import selectors, services
from projects.forms import ProjectCreateForm, ProjectFilterForm, ProjectForm, figure_context
from projects.lifecycle import ProjectStatusError, is_editable
from projects.models import Project
from projects.permissions import can_create_project, can_manage_project, can_view_project

logger = logging.getLogger(__name__)

TRANSITIONS = {
    "activate": services.project_activate,
    "pause": services.project_pause,
    "resume": services.project_resume,
    "archive": services.project_archive,
    "restore": services.project_restore,
}

#: Transitions that ask first (a GET shows a confirmation page with the POST form; no JavaScript needed).
CONFIRM = {
    "archive": (
        "Archive",
        "An archived project stops taking nodes and can no longer be edited; only an admin can restore it.",
    ),
    "restore": ("Restore", "The project comes back paused; its owner resumes it when ready."),
}


def _visible_project(request: HttpRequest, slug: str) -> Project:
    project = selectors.project_get(slug=slug)
    if project is None or not can_view_project(request.user, project):
        raise Http404("No such project.")
    return project


def _managed_project(request: HttpRequest, slug: str) -> Project:
    project = _visible_project(request, slug)
    if not can_manage_project(request.user, project):
        logger.warning("user %s tried to manage project %s", request.user.pk, slug)
        raise PermissionDenied("Only the project's owner can change it.")
    return project


def project_list(request: HttpRequest) -> HttpResponse:
    filters = ProjectFilterForm(request.GET)
    search = status = ""
    if filters.is_valid():
        search, status = filters.cleaned_data["q"], filters.cleaned_data["status"]
    projects = selectors.project_list_public(search=search, status=status)
    page = Paginator(projects, selectors.PAGE_SIZE).get_page(request.GET.get("page"))
    return render(
        request,
        "projects/list.html",
        {"filters": filters, "page": page, "search": search, "status": status},
    )


@login_required
def project_list_mine(request: AuthenticatedHttpRequest) -> HttpResponse:
    if not can_create_project(request.user):
        raise PermissionDenied("Only researchers have projects of their own.")
    projects = selectors.project_list_owned(owner=request.user)
    return render(request, "projects/mine.html", {"projects": projects})


def project_detail(request: HttpRequest, slug: str) -> HttpResponse:
    project = _visible_project(request, slug)
    return render(
        request,
        "projects/detail.html",
        {"project": project, "can_manage": can_manage_project(request.user, project)},
    )


@login_required
def project_create(request: AuthenticatedHttpRequest) -> HttpResponse:
    if not can_create_project(request.user):
        logger.warning("non-researcher %s tried to create a project", request.user.pk)
        raise PermissionDenied("Only researchers can create projects.")
    form = ProjectCreateForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        project = services.project_create(owner=request.user, **form.cleaned_data)
        messages.success(request, f"Project “{project.title}” created ({project.get_status_display()}).")
        return redirect(project)
    return render(request, "projects/form.html", {"form": form, "creating": True, **figure_context(form)})


@login_required
def project_edit(request: AuthenticatedHttpRequest, slug: str) -> HttpResponse:
    project = _managed_project(request, slug)
    if not is_editable(project.status):
        messages.error(request, "An archived project can no longer be edited.")
        return redirect(project)
    form = ProjectForm(request.POST or None, instance=Project.objects.get(pk=project.pk))
    if request.method == "POST" and form.is_valid():
        services.project_update(project=project, actor=request.user, **form.cleaned_data)
        messages.success(request, "Project saved.")
        return redirect(project)
    context = {"form": form, "project": project, "creating": False, **figure_context(form)}
    return render(request, "projects/form.html", context)


@login_required
@require_http_methods(["GET", "POST"])
def project_transition(request: AuthenticatedHttpRequest, slug: str, action: str) -> HttpResponse:
    service = TRANSITIONS.get(action)
    if service is None:
        raise Http404("No such action.")
    if request.method == "GET" and action not in CONFIRM:
        return HttpResponseNotAllowed(["POST"])
    project = _managed_project(request, slug)
    if request.method == "GET":
        label, consequence = CONFIRM[action]
        return render(
            request,
            "core/confirm.html",
            {
                "title": f"{label} “{project.title}”?",
                "subject": f"Project “{project.title}” ({project.get_status_display().lower()})",
                "consequence": consequence,
                "action_url": request.path,
                "button": label,
                "danger": action == "archive",
                "next": project.get_absolute_url(),
            },
        )
    try:
        service(project=project, actor=request.user)
    except ProjectStatusError as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, f"Project is now {project.get_status_display().lower()}.")
    return redirect(project)

"""Admin for projects. The status changes only through the lifecycle services (admin actions), so its
rules hold (projects.lifecycle), the change is logged and the public listing hears of it."""

from __future__ import annotations

from collections.abc import Callable

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest

from accounts.models import User
from projects import services
from projects.lifecycle import ProjectStatusError
from projects.models import Project

StatusService = Callable[..., Project]


@admin.register(Project)
class ProjectAdmin(admin.ModelAdmin):
    list_display = [
        "title",
        "slug",
        "owner",
        "status",
        "task",
        "dataset",
        "expert_architecture",
        "grid_shape",
        "created_at",
    ]
    list_filter = ["status", "task", "dataset", "expert_architecture", "join_policy"]
    search_fields = ["title", "slug", "description", "owner__email"]
    readonly_fields = ["status", "created_at", "updated_at", "status_changed_at"]
    raw_id_fields = ["owner"]
    actions = ["activate", "pause", "resume", "archive"]

    def _apply(self, request: HttpRequest, queryset: QuerySet[Project], service: StatusService) -> None:
        actor = request.user
        assert isinstance(actor, User)  # the admin site admits only logged-in staff
        changed = 0
        for project in queryset:
            try:
                service(project=project, actor=actor)
                changed += 1
            except (ProjectStatusError, PermissionDenied) as exc:
                self.message_user(request, f"{project.title}: {exc}", messages.ERROR)
        self.message_user(request, f"{changed} project(s) changed.")

    @admin.action(description="Activate selected projects")
    def activate(self, request: HttpRequest, queryset: QuerySet[Project]) -> None:
        self._apply(request, queryset, services.project_activate)

    @admin.action(description="Pause selected projects")
    def pause(self, request: HttpRequest, queryset: QuerySet[Project]) -> None:
        self._apply(request, queryset, services.project_pause)

    @admin.action(description="Resume selected paused projects")
    def resume(self, request: HttpRequest, queryset: QuerySet[Project]) -> None:
        self._apply(request, queryset, services.project_resume)

    @admin.action(description="Archive selected projects")
    def archive(self, request: HttpRequest, queryset: QuerySet[Project]) -> None:
        self._apply(request, queryset, services.project_archive)

"""Who may do what with projects. Views turn a False into 403; services refuse too, as a second line."""

from __future__ import annotations

from django.contrib.auth.models import AnonymousUser

from accounts.models import User
from projects.lifecycle import ProjectStatus
from projects.models import Project

AnyUser = User | AnonymousUser


def can_create_project(user: AnyUser) -> bool:
    return bool(user.is_authenticated and getattr(user, "is_researcher", False))


def can_manage_project(user: AnyUser, project: Project) -> bool:
    return bool(user.is_authenticated and (user.is_staff or project.owner_id == user.pk))


def can_view_project(user: AnyUser, project: Project) -> bool:
    return project.status != ProjectStatus.DRAFT or can_manage_project(user, project)

"""Reads about projects: the public listing, one project, a researcher's own projects."""

from __future__ import annotations

from django.db.models import Q, QuerySet

from accounts.models import User
from projects.lifecycle import PUBLIC_STATUSES
from projects.models import Project

PAGE_SIZE = 12


def project_list_public(*, search: str = "", status: str = "") -> QuerySet[Project]:
    """Projects anyone can see (not drafts), optionally searched by text and filtered by status.

    An unknown status filter yields nothing rather than everything, so a typo never looks like a result.
    """
    projects = Project.objects.select_related("owner").filter(status__in=PUBLIC_STATUSES)
    if status:
        projects = projects.filter(status=status) if status in PUBLIC_STATUSES else projects.none()
    search = search.strip()
    if search:
        projects = projects.filter(
            Q(title__icontains=search) | Q(description__icontains=search) | Q(slug__icontains=search)
        )
    return projects


def project_list_owned(*, owner: User) -> QuerySet[Project]:
    return Project.objects.select_related("owner").filter(owner=owner)


def project_get(*, slug: str) -> Project | None:
    return Project.objects.select_related("owner").filter(slug=slug).first()


def project_slug_taken(*, slug: str) -> bool:
    return Project.objects.filter(slug=slug).exists()

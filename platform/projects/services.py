"""Writes about projects: create, edit and move through the lifecycle.

Each write checks permissions itself (views check first for a friendly 403), and each change that the
public listing shows is broadcast to its live group after commit.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.utils import timezone
from django.utils.text import slugify

from accounts.models import User
from core.events import PROJECT_LISTING_GROUP, broadcast_on_commit
from projects import selectors
from projects.events import project_changed
from projects.lifecycle import (
    PUBLIC_STATUSES,
    ProjectStatus,
    ProjectStatusError,
    check_restore,
    check_transition,
    is_editable,
)
from projects.models import RESERVED_SLUGS, Project
from projects.permissions import can_create_project, can_manage_project

logger = logging.getLogger(__name__)

EDITABLE_FIELDS = (
    "title",
    "description",
    "task",
    "dataset",
    "lm_corpus",
    "lm_blocks",
    "lm_seq_len",
    "lm_window",
    "lm_heads",
    "expert_architecture",
    "hidden_size",
    "grid_shape",
    "optimizer",
    "learning_rate",
    "join_policy",
)


def _unique_slug(title: str) -> str:
    base = slugify(title)[:50] or "project"
    slug, n = base, 2
    while slug in RESERVED_SLUGS or selectors.project_slug_taken(slug=slug):
        slug, n = f"{base}-{n}", n + 1
    return slug


def _announce(project: Project) -> None:
    if project.status in PUBLIC_STATUSES:
        broadcast_on_commit(PROJECT_LISTING_GROUP, project_changed(project))


def project_create(
    *,
    owner: User,
    title: str,
    slug: str = "",
    description: str = "",
    expert_architecture: str,
    hidden_size: int,
    grid_shape: str,
    optimizer: str,
    learning_rate: float,
    dataset: str,
    join_policy: str,
    launch: bool = False,
    **language_model: Any,
) -> Project:
    """Create a project as a draft, or straight away as active when `launch` is set.

    `language_model` holds the task (`task="lm"`) and the `lm_*` shape fields; a classifier needs none."""
    unknown = set(language_model) - {"task", *(f for f in EDITABLE_FIELDS if f.startswith("lm_"))}
    if unknown:
        raise ValueError(f"unknown project fields: {', '.join(sorted(unknown))}")
    if not can_create_project(owner):
        raise PermissionDenied("Only researchers can create projects.")
    project = Project(
        owner=owner,
        title=title.strip(),
        slug=slug or _unique_slug(title),
        description=description.strip(),
        expert_architecture=expert_architecture,
        hidden_size=hidden_size,
        grid_shape=grid_shape,
        optimizer=optimizer,
        learning_rate=learning_rate,
        dataset=dataset,
        join_policy=join_policy,
        status=ProjectStatus.ACTIVE if launch else ProjectStatus.DRAFT,
        **language_model,
    )
    project.full_clean()
    project.normalise()
    project.save()
    logger.info("project %s created by %s as %s", project.slug, owner.email, project.status)
    _announce(project)
    return project


def project_update(*, project: Project, actor: User, **changes: Any) -> Project:
    """Change a project's settings (not its status or slug: agents and links depend on the slug)."""
    if not can_manage_project(actor, project):
        raise PermissionDenied("Only the project's owner can edit it.")
    if not is_editable(project.status):
        raise ProjectStatusError("An archived project can no longer be edited.")
    unknown = set(changes) - set(EDITABLE_FIELDS)
    if unknown:
        raise ValueError(f"not editable: {', '.join(sorted(unknown))}")
    for field, value in changes.items():
        setattr(project, field, value.strip() if isinstance(value, str) else value)
    project.full_clean()
    project.normalise()
    project.save()
    _announce(project)
    return project


def _project_set_status(
    *, project: Project, actor: User, target: str, check: Callable[[str], None] | None = None
) -> Project:
    """Move to `target` under a row lock; `check(current)` replaces the lifecycle's transition rule."""
    if not can_manage_project(actor, project):
        raise PermissionDenied("Only the project's owner can change its status.")
    with transaction.atomic():
        locked = Project.objects.select_for_update().get(pk=project.pk)
        if check is None:
            check_transition(locked.status, target)
        else:
            check(locked.status)
        locked.status = target
        locked.status_changed_at = timezone.now()
        locked.save(update_fields=["status", "status_changed_at", "updated_at"])
    project.status, project.status_changed_at, project.updated_at = (
        locked.status,
        locked.status_changed_at,
        locked.updated_at,
    )
    logger.info("project %s is now %s (by %s)", project.slug, target, actor.email)
    _announce(project)
    return project


def project_activate(*, project: Project, actor: User) -> Project:
    return _project_set_status(project=project, actor=actor, target=ProjectStatus.ACTIVE)


def project_pause(*, project: Project, actor: User) -> Project:
    return _project_set_status(project=project, actor=actor, target=ProjectStatus.PAUSED)


def project_resume(*, project: Project, actor: User) -> Project:
    if project.status != ProjectStatus.PAUSED:
        raise ProjectStatusError("Only a paused project can be resumed.")
    return _project_set_status(project=project, actor=actor, target=ProjectStatus.ACTIVE)


def project_archive(*, project: Project, actor: User) -> Project:
    return _project_set_status(project=project, actor=actor, target=ProjectStatus.ARCHIVED)


def project_restore(*, project: Project, actor: User) -> Project:
    """Undo an archive (staff only): the project comes back paused, so its owner decides when it resumes."""
    if not actor.is_staff:
        raise PermissionDenied("Only admins can restore an archived project.")
    return _project_set_status(project=project, actor=actor, target=ProjectStatus.PAUSED, check=check_restore)

"""A project's status machine, kept pure so the rules are easy to read and test.

draft -> active (activate); active <-> paused (pause / resume); any but archived -> archived (archive).
Archived is final for its owner: the project stays visible for the record but can no longer change; only
staff can restore it (archived -> paused, `check_restore`), so a mistaken archive is not lost.
"""

from __future__ import annotations

from django.db import models


class ProjectStatus(models.TextChoices):
    DRAFT = "draft", "Draft"
    ACTIVE = "active", "Active"
    PAUSED = "paused", "Paused"
    ARCHIVED = "archived", "Archived"


ALLOWED_TRANSITIONS: dict[str, frozenset[str]] = {
    ProjectStatus.DRAFT: frozenset({ProjectStatus.ACTIVE, ProjectStatus.ARCHIVED}),
    ProjectStatus.ACTIVE: frozenset({ProjectStatus.PAUSED, ProjectStatus.ARCHIVED}),
    ProjectStatus.PAUSED: frozenset({ProjectStatus.ACTIVE, ProjectStatus.ARCHIVED}),
    ProjectStatus.ARCHIVED: frozenset(),
}

# The statuses anyone can see in the public listing; drafts are the owner's business.
PUBLIC_STATUSES = (ProjectStatus.ACTIVE, ProjectStatus.PAUSED, ProjectStatus.ARCHIVED)


class ProjectStatusError(Exception):
    """A status change that the lifecycle does not allow (e.g. resuming an archived project)."""


def check_transition(current: str, target: str) -> None:
    if target not in ALLOWED_TRANSITIONS:
        raise ProjectStatusError(f"unknown project status {target!r}")
    if target not in ALLOWED_TRANSITIONS.get(current, frozenset()):
        raise ProjectStatusError(
            f"A {ProjectStatus(current).label.lower()} project cannot become "
            f"{ProjectStatus(target).label.lower()}."
        )


def check_restore(current: str) -> None:
    """Restoring (staff only, checked by the service) takes an archived project back to paused."""
    if current != ProjectStatus.ARCHIVED:
        raise ProjectStatusError("Only an archived project can be restored.")


def is_editable(status: str) -> bool:
    return status != ProjectStatus.ARCHIVED

"""Builds the live events that project services broadcast (types in core.events)."""

from __future__ import annotations

from core.events import ProjectChangedEvent, ProjectSummary
from projects.models import Project


def project_summary(project: Project) -> ProjectSummary:
    return {
        "slug": project.slug,
        "title": project.title,
        "description": project.description[:280],
        "status": project.status,
        "status_label": project.get_status_display(),
        "url": project.get_absolute_url(),
        "owner": project.owner.display_name,
        "dataset": project.data_label,
        "architecture": project.get_expert_architecture_display(),
        "grid_shape": project.grid_shape,
        "updated_at": project.updated_at.isoformat(),
    }


def project_changed(project: Project) -> ProjectChangedEvent:
    return {"type": "project.changed", "project": project_summary(project)}

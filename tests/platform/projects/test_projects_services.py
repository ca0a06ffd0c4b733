"""Project services: creation rules, edits, lifecycle, and the events they broadcast."""

from __future__ import annotations

import pytest
from django.core.exceptions import PermissionDenied, ValidationError

from projects import services
from projects.lifecycle import ProjectStatusError
from projects.models import Project

pytestmark = pytest.mark.django_db


def test_researcher_creates_a_draft_with_a_unique_slug(researcher, project_fields) -> None:
    first = services.project_create(owner=researcher, **project_fields)
    second = services.project_create(owner=researcher, **{**project_fields, "grid_shape": "8 X 8"})
    assert (first.slug, second.slug) == ("digits-swarm", "digits-swarm-2")
    assert first.status == "draft"
    assert second.grid_shape == "8x8" and second.expert_count == 64


def test_volunteers_cannot_create_projects(volunteer, project_fields) -> None:
    with pytest.raises(PermissionDenied):
        services.project_create(owner=volunteer, **project_fields)
    assert not Project.objects.exists()


@pytest.mark.parametrize(
    ("field", "value"),
    [("grid_shape", "0x3"), ("hidden_size", 4), ("learning_rate", 0.0), ("dataset", "mnist"), ("title", " ")],
)
def test_invalid_settings_are_refused(researcher, field: str, value: object, project_fields) -> None:
    with pytest.raises(ValidationError) as info:
        services.project_create(owner=researcher, **{**project_fields, field: value})
    assert field in info.value.message_dict


def test_lifecycle_and_permissions(project, researcher, other_researcher, staff) -> None:
    with pytest.raises(PermissionDenied):
        services.project_pause(project=project, actor=other_researcher)
    services.project_pause(project=project, actor=researcher)
    assert Project.objects.get(pk=project.pk).status == "paused"
    with pytest.raises(ProjectStatusError):
        services.project_pause(project=project, actor=researcher)
    services.project_resume(project=project, actor=researcher)
    services.project_archive(project=project, actor=staff)
    assert Project.objects.get(pk=project.pk).status == "archived"
    with pytest.raises(ProjectStatusError, match="archived project cannot become active"):
        services.project_activate(project=project, actor=researcher)
    with pytest.raises(ProjectStatusError, match="no longer be edited"):
        services.project_update(project=project, actor=researcher, title="New")


def test_update_changes_only_editable_fields(project, researcher, other_researcher) -> None:
    services.project_update(project=project, actor=researcher, title=" Better title ", grid_shape="2x2x2")
    project.refresh_from_db()
    assert (project.title, project.grid_shape) == ("Better title", "2x2x2")
    with pytest.raises(ValueError, match="status"):
        services.project_update(project=project, actor=researcher, status="archived")
    with pytest.raises(PermissionDenied):
        services.project_update(project=project, actor=other_researcher, title="Mine now")


def test_changes_to_public_projects_are_broadcast_after_commit(
    researcher, django_capture_on_commit_callbacks, project_fields
) -> None:
    with django_capture_on_commit_callbacks() as draft_callbacks:
        draft = services.project_create(owner=researcher, **project_fields)
    assert draft_callbacks == []  # drafts are private: nothing to tell the public listing
    with django_capture_on_commit_callbacks() as callbacks:
        services.project_activate(project=draft, actor=researcher)
    assert len(callbacks) == 1


def test_reserved_slugs_are_avoided_or_refused(researcher, project_fields) -> None:
    generated = services.project_create(owner=researcher, **{**project_fields, "title": "New"})
    assert generated.slug == "new-2"
    with pytest.raises(ValidationError, match="reserved"):
        services.project_create(owner=researcher, slug="mine", **project_fields)

"""Project pages: listing (search, filter, pagination), detail, create/edit forms and permissions."""

from __future__ import annotations

import pytest
from django.urls import reverse

from projects.models import Project

pytestmark = pytest.mark.django_db


@pytest.fixture
def form(project_fields: dict[str, object]) -> dict[str, object]:
    return {**project_fields, "slug": "", "launch": "on"}


def test_listing_shows_public_projects_only(client, make_project) -> None:
    make_project(title="Visible one")
    make_project(title="Secret draft", launch=False)
    body = client.get(reverse("projects:list")).content.decode()
    assert "Visible one" in body
    assert "Secret draft" not in body


def test_listing_search_and_status_filter(client, make_project, researcher) -> None:
    iris = make_project(title="Iris swarm", dataset="iris")
    make_project(title="Wine swarm", description="grapes")
    from projects import services

    services.project_pause(project=iris, actor=researcher)
    assert [p.title for p in client.get(reverse("projects:list"), {"q": "grape"}).context["page"]] == [
        "Wine swarm"
    ]
    paused = client.get(reverse("projects:list"), {"status": "paused"}).context["page"]
    assert [p.title for p in paused] == ["Iris swarm"]
    bogus = client.get(reverse("projects:list"), {"status": "draft"})
    assert bogus.status_code == 200 and len(bogus.context["page"]) == 2  # invalid filter ignored
    nothing = client.get(reverse("projects:list"), {"q": "zebra"}).content.decode()
    assert "No projects match" in nothing


def test_listing_paginates(client, make_project) -> None:
    for i in range(14):
        make_project(title=f"Project {i:02d}")
    first = client.get(reverse("projects:list"))
    assert len(first.context["page"]) == 12 and "Page 1 of 2" in first.content.decode()
    second = client.get(reverse("projects:list"), {"page": 2})
    assert [p.title for p in second.context["page"]] == ["Project 01", "Project 00"]
    assert client.get(reverse("projects:list"), {"page": "junk"}).status_code == 200


def test_detail_page_and_404s(client, project, make_project, researcher, volunteer, logged_in) -> None:
    page = client.get(project.get_absolute_url())
    assert page.status_code == 200 and "4x4 (16 experts)" in page.content.decode()
    per_expert = project.parameters_per_expert
    assert f"each expert has {per_expert:,}" in page.content.decode()
    assert "parameters across the grid" in page.content.decode()
    assert "Manage" not in page.content.decode()
    assert client.get(reverse("projects:detail", args=["no-such-project"])).status_code == 404
    draft = make_project(title="Draft", launch=False)
    assert logged_in(volunteer).get(draft.get_absolute_url()).status_code == 404
    owner_view = logged_in(researcher).get(draft.get_absolute_url())
    assert owner_view.status_code == 200 and "Manage" in owner_view.content.decode()


def test_researcher_creates_a_project_through_the_form(researcher, logged_in, form) -> None:
    client = logged_in(researcher)
    assert client.get(reverse("projects:create")).status_code == 200
    response = client.post(reverse("projects:create"), form)
    project = Project.objects.get()
    assert response["Location"] == project.get_absolute_url()
    assert (project.owner, project.status, project.slug) == (researcher, "active", "digits-swarm")


def test_invalid_form_rerenders_with_errors(researcher, logged_in, form) -> None:
    response = logged_in(researcher).post(
        reverse("projects:create"), {**form, "grid_shape": "16x", "hidden_size": "0", "slug": "bad slug!"}
    )
    body = response.content.decode()
    assert response.status_code == 200
    assert "Invalid grid shape" in body
    assert "greater than or equal to 8" in body
    assert "valid “slug”" in body
    assert not Project.objects.exists()


def test_duplicate_slug_is_a_form_error(researcher, project, logged_in, form) -> None:
    response = logged_in(researcher).post(reverse("projects:create"), {**form, "slug": project.slug})
    assert response.status_code == 200
    assert "Project with this Slug already exists." in response.content.decode()


def test_volunteer_gets_403_not_500(volunteer, project, logged_in, form) -> None:
    client = logged_in(volunteer)
    denied = client.get(reverse("projects:create"))
    assert denied.status_code == 403
    assert "Only researchers can create projects." in denied.content.decode()
    assert client.post(reverse("projects:create"), form).status_code == 403
    assert client.get(reverse("projects:edit", args=[project.slug])).status_code == 403
    assert client.post(reverse("projects:transition", args=[project.slug, "pause"])).status_code == 403
    assert client.get(reverse("projects:mine")).status_code == 403


def test_anonymous_users_are_sent_to_login(client, project) -> None:
    response = client.get(reverse("projects:create"))
    assert response.status_code == 302 and response["Location"].startswith(reverse("accounts:login"))


def test_owner_edits_and_other_researcher_cannot(
    project, researcher, other_researcher, logged_in, project_fields
) -> None:
    url = reverse("projects:edit", args=[project.slug])
    assert logged_in(other_researcher).post(url, {**project_fields, "title": "Stolen"}).status_code == 403
    client = logged_in(researcher)
    assert client.get(url).status_code == 200
    response = client.post(url, {**project_fields, "title": "Digits, bigger", "grid_shape": "8x8"})
    assert response["Location"] == project.get_absolute_url()
    project.refresh_from_db()
    assert (project.title, project.grid_shape) == ("Digits, bigger", "8x8")
    invalid = client.post(url, {**project_fields, "learning_rate": "-1"})
    assert invalid.status_code == 200 and "greater than or equal to" in invalid.content.decode()


def test_owner_pauses_resumes_and_archives(project, researcher, logged_in) -> None:
    client = logged_in(researcher)

    def act(action: str) -> str:
        response = client.post(reverse("projects:transition", args=[project.slug, action]), follow=True)
        assert response.status_code == 200
        return response.content.decode()

    assert "Project is now paused." in act("pause")
    assert "Project is now active." in act("resume")
    assert "Project is now archived." in act("archive")
    assert "archived project cannot become paused" in act("pause")
    assert Project.objects.get(pk=project.pk).status == "archived"
    edit = client.get(reverse("projects:edit", args=[project.slug]), follow=True)
    assert "can no longer be edited" in edit.content.decode()


def test_transition_needs_post_and_a_known_action(project, researcher, logged_in) -> None:
    client = logged_in(researcher)
    assert client.get(reverse("projects:transition", args=[project.slug, "pause"])).status_code == 405
    assert client.post(reverse("projects:transition", args=[project.slug, "explode"])).status_code == 404


def test_my_projects_lists_drafts_for_the_owner(researcher, make_project, logged_in) -> None:
    make_project(title="My draft", launch=False)
    body = logged_in(researcher).get(reverse("projects:mine")).content.decode()
    assert "My draft" in body and "Draft" in body

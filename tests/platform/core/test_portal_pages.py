"""Site-wide pages, the health check, built static files and the demo seed command."""

from __future__ import annotations

from io import StringIO

import pytest
from django.conf import settings
from django.core.management import call_command
from django.urls import reverse

from accounts.models import User
from projects.models import Project

pytestmark = pytest.mark.django_db


def test_home_page_features_active_projects(client, project) -> None:
    response = client.get(reverse("core:home"))
    body = response.content.decode()
    assert response.status_code == 200
    assert project.title in body
    assert "/static/colearn.css" in body and "/static/colearn.js" in body


def test_navigation_depends_on_the_role(client, researcher, volunteer, logged_in) -> None:
    assert "Sign up" in client.get(reverse("core:home")).content.decode()
    assert "New project" in logged_in(researcher).get(reverse("core:home")).content.decode()
    volunteer_page = logged_in(volunteer).get(reverse("core:home")).content.decode()
    assert "New project" not in volunteer_page and "Log out" in volunteer_page


def test_healthz_reports_the_database(client) -> None:
    response = client.get(reverse("core:healthz"))
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "database": "ok"}
    assert "no-cache" in response["Cache-Control"]


def test_frontend_bundle_is_built_and_served(client) -> None:
    # scripts/setup runs `npm run build` in frontend/ before the tests.
    assert (settings.STATIC_BUILD_DIR / "colearn.js").is_file(), "run: cd frontend && npm ci && npm run build"
    response = client.get("/static/colearn.js")
    assert response.status_code == 200
    assert b"/ws/projects/" in b"".join(response.streaming_content)
    assert client.get("/static/colearn.css").status_code == 200


def test_seed_demo_is_idempotent() -> None:
    out = StringIO()
    call_command("seed_demo", stdout=out)
    call_command("seed_demo", stdout=out)
    assert User.objects.count() == 3
    admin = User.objects.get(email="admin@demo.colearn")
    assert admin.is_staff and admin.is_superuser
    assert not User.objects.get(email="volunteer@demo.colearn").is_staff
    project = Project.objects.get(slug="demo-digits")
    assert (project.status, project.dataset, project.expert_architecture) == ("active", "digits", "ffn")
    assert (project.hidden_size, project.grid_shape) == (64, "4x4")
    assert User.objects.get(email="researcher@demo.colearn").check_password("colearn-demo-pass")
    assert "volunteer@demo.colearn / colearn-demo-pass" in out.getvalue()

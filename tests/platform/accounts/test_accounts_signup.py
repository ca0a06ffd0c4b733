"""Sign-up through the real view: valid, duplicate, weak password, mismatched passwords."""

from __future__ import annotations

import pytest
from django.core import mail
from django.urls import reverse

from accounts.models import Role, User
from accounts.services import DUPLICATE_EMAIL_MESSAGE

pytestmark = pytest.mark.django_db

GOOD = {
    "email": "New.Person@Example.org",
    "display_name": "New Person",
    "role": "researcher",
    "password": "correct-horse-battery-9",
    "password_confirm": "correct-horse-battery-9",
}


def test_signup_creates_account_logs_in_and_sends_the_welcome(
    client, django_capture_on_commit_callbacks
) -> None:
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        response = client.post(reverse("accounts:signup"), GOOD)
    assert response.status_code == 302
    assert response["Location"] == reverse("projects:list")
    user = User.objects.get(email="new.person@example.org")
    assert user.role == Role.RESEARCHER
    assert user.display_name == "New Person"
    assert user.check_password(GOOD["password"])
    assert len(callbacks) == 1
    assert [m.subject for m in mail.outbox] == ["Welcome to Colearn"]
    assert mail.outbox[0].to == ["new.person@example.org"]
    user.refresh_from_db()
    assert user.welcome_sent_at is not None
    assert int(client.session["_auth_user_id"]) == user.pk


def test_duplicate_email_is_refused_case_insensitively(client, volunteer) -> None:
    response = client.post(reverse("accounts:signup"), {**GOOD, "email": "VERA@example.org"})
    assert response.status_code == 200
    assert DUPLICATE_EMAIL_MESSAGE in response.content.decode()
    assert User.objects.filter(email__iexact="vera@example.org").count() == 1


@pytest.mark.parametrize(
    ("password", "message"),
    [("short1", "too short"), ("password123", "too common"), ("1234567890123", "entirely numeric")],
)
def test_weak_passwords_are_refused_with_the_reason(client, password: str, message: str) -> None:
    response = client.post(
        reverse("accounts:signup"), {**GOOD, "password": password, "password_confirm": password}
    )
    assert response.status_code == 200
    assert message in response.content.decode()
    assert not User.objects.exists()


def test_mismatched_passwords_and_bad_email_rerender_the_form(client) -> None:
    response = client.post(
        reverse("accounts:signup"), {**GOOD, "email": "not-an-email", "password_confirm": "something-else-77"}
    )
    body = response.content.decode()
    assert response.status_code == 200
    assert "The two passwords differ." in body
    assert "Enter a valid email address." in body
    assert not User.objects.exists()


def test_signup_page_renders_and_redirects_logged_in_users(client, volunteer) -> None:
    assert client.get(reverse("accounts:signup")).status_code == 200
    client.force_login(volunteer)
    assert client.get(reverse("accounts:signup"))["Location"] == reverse("accounts:profile")


def test_signup_shows_every_password_error_with_the_other_errors_at_once(client) -> None:
    """A short, common, numeric password and a bad e-mail: one submit lists every problem, not one per try."""
    response = client.post(
        reverse("accounts:signup"),
        GOOD | {"email": "not-an-email", "password": "1234", "password_confirm": "12345"},
    )
    text = response.content.decode()
    assert response.status_code == 200 and not User.objects.exists()
    assert "Enter a valid email address." in text
    assert "too short" in text and "too common" in text and "entirely numeric" in text
    assert "The two passwords differ." in text


def test_signup_checks_the_password_against_the_email_in_the_form(client) -> None:
    same = "new.person@example.org"
    response = client.post(reverse("accounts:signup"), GOOD | {"password": same, "password_confirm": same})
    assert "too similar" in response.content.decode() and not User.objects.exists()

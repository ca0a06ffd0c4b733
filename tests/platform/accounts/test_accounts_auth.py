"""Log in, log out, password reset by e-mail, and the profile page."""

from __future__ import annotations

import re

import pytest
from django.core import mail
from django.urls import reverse

from accounts.models import User

pytestmark = pytest.mark.django_db

PASSWORD = "a-Strong-passphrase-42"


def test_login_with_email_in_any_case_and_logout(client, volunteer: User) -> None:
    response = client.post(reverse("accounts:login"), {"username": "Vera@Example.org", "password": PASSWORD})
    assert response.status_code == 302
    assert int(client.session["_auth_user_id"]) == volunteer.pk
    response = client.post(reverse("accounts:logout"))
    assert response.status_code == 302
    assert "_auth_user_id" not in client.session


def test_wrong_password_shows_an_error(client, volunteer: User) -> None:
    response = client.post(
        reverse("accounts:login"), {"username": volunteer.email, "password": "nope-nope-nope"}
    )
    assert response.status_code == 200
    assert "do not match an account" in response.content.decode()
    assert "_auth_user_id" not in client.session


def test_password_reset_sends_a_working_link(client, volunteer: User) -> None:
    response = client.post(reverse("accounts:password_reset"), {"email": volunteer.email})
    assert response["Location"] == reverse("accounts:password_reset_done")
    assert len(mail.outbox) == 1
    message = mail.outbox[0]
    assert message.subject == "Reset your Colearn password"
    link = re.search(r"https?://[^/]+(/accounts/reset/\S+/)", message.body).group(1)

    form_page = client.get(link, follow=True)  # Django swaps the token for a session-bound URL
    assert form_page.context["validlink"] is True
    new_password = "brand-new-passphrase-77"
    done = client.post(
        form_page.redirect_chain[-1][0], {"new_password1": new_password, "new_password2": new_password}
    )
    assert done["Location"] == reverse("accounts:password_reset_complete")
    volunteer.refresh_from_db()
    assert volunteer.check_password(new_password)


def test_password_reset_for_unknown_email_reveals_nothing(client) -> None:
    response = client.post(reverse("accounts:password_reset"), {"email": "ghost@example.org"})
    assert response["Location"] == reverse("accounts:password_reset_done")
    assert mail.outbox == []


def test_profile_requires_login_and_saves_the_display_name(client, volunteer: User) -> None:
    assert client.get(reverse("accounts:profile"))["Location"].startswith(reverse("accounts:login"))
    client.force_login(volunteer)
    page = client.get(reverse("accounts:profile"))
    assert "Volunteer" in page.content.decode()
    response = client.post(reverse("accounts:profile"), {"display_name": "  Vera V. "})
    assert response.status_code == 302
    volunteer.refresh_from_db()
    assert volunteer.display_name == "Vera V."
    assert client.post(reverse("accounts:profile"), {"display_name": ""}).status_code == 200


def test_admin_can_change_a_users_role(client, staff: User, volunteer: User) -> None:
    client.force_login(staff)
    url = reverse("admin:accounts_user_change", args=[volunteer.pk])
    assert client.get(url).status_code == 200
    response = client.post(
        url,
        {
            "email": volunteer.email,
            "display_name": volunteer.display_name,
            "role": "researcher",
            "is_active": "on",
            "date_joined_0": "2026-01-01",
            "date_joined_1": "00:00:00",
        },
    )
    assert response.status_code == 302, response.context["adminform"].form.errors if response.context else ""
    volunteer.refresh_from_db()
    assert volunteer.is_researcher


def test_admin_user_list_and_add_pages_render(client, staff: User) -> None:
    client.force_login(staff)
    assert client.get(reverse("admin:accounts_user_changelist")).status_code == 200
    assert client.get(reverse("admin:accounts_user_add")).status_code == 200

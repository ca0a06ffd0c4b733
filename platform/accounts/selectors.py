"""Reads about users."""

from __future__ import annotations

from datetime import datetime, timedelta

from django.db.models import QuerySet

from accounts.models import User

WELCOME_RETRY_AFTER = timedelta(minutes=5)
WELCOME_GIVE_UP_AFTER = timedelta(days=7)


def user_get(*, user_id: int) -> User | None:
    return User.objects.filter(pk=user_id).first()


def user_email_taken(*, email: str) -> bool:
    return User.objects.filter(email__iexact=email.strip()).exists()


def users_awaiting_welcome(*, now: datetime) -> QuerySet[User]:
    """Active users whose welcome e-mail never went out (worker down, SMTP error), still worth sending."""
    return User.objects.filter(
        is_active=True,
        welcome_sent_at__isnull=True,
        date_joined__lte=now - WELCOME_RETRY_AFTER,
        date_joined__gte=now - WELCOME_GIVE_UP_AFTER,
    )

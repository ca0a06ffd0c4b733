"""Writes about users: sign-up, profile changes and the welcome e-mail."""

from __future__ import annotations

import logging
from datetime import datetime

from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.core.mail import send_mail
from django.db import IntegrityError, transaction
from django.template.loader import render_to_string

from accounts import selectors
from accounts.models import Role, User

logger = logging.getLogger(__name__)

DUPLICATE_EMAIL_MESSAGE = "An account with this e-mail address already exists. Log in or reset your password."


def user_create(*, email: str, password: str, display_name: str, role: str) -> User:
    """Create an account and queue its welcome e-mail once the account is committed.

    Raises ValidationError keyed by field (`email`, `password`, `role`, ...) so forms can show each message.
    """
    email = email.strip().lower()
    if role not in Role.values:
        raise ValidationError({"role": f"Unknown role {role!r}."})
    if selectors.user_email_taken(email=email):
        raise ValidationError({"email": DUPLICATE_EMAIL_MESSAGE}, code="duplicate_email")
    user = User(email=email, display_name=display_name.strip(), role=role)
    try:
        validate_password(password, user=user)
    except ValidationError as exc:
        raise ValidationError({"password": exc.messages}) from None
    user.set_password(password)
    user.full_clean(exclude=["password", "email"])
    try:
        with transaction.atomic():
            user.save()
    except IntegrityError:  # a concurrent sign-up with the same address won the race
        raise ValidationError({"email": DUPLICATE_EMAIL_MESSAGE}, code="duplicate_email") from None
    logger.info("new %s account %s (id %s)", role, email, user.pk)

    from accounts.tasks import send_welcome_email

    transaction.on_commit(lambda: send_welcome_email.delay(user.pk))
    return user


def user_profile_update(*, user: User, display_name: str) -> User:
    user.display_name = display_name.strip()
    user.full_clean(exclude=["password"])
    user.save(update_fields=["display_name"])
    return user


def user_welcome_send(*, user: User, now: datetime) -> bool:
    """Send the welcome e-mail at most once; returns False if it had already been sent.

    The row is claimed with a conditional UPDATE before sending, so two workers never both send it; if
    sending fails the claim is released and the error propagates so the task can retry.
    """
    claimed = User.objects.filter(pk=user.pk, welcome_sent_at__isnull=True).update(welcome_sent_at=now)
    if not claimed:
        return False
    context = {"user": user}
    try:
        send_mail(
            subject="Welcome to Colearn",
            message=render_to_string("accounts/welcome_email.txt", context),
            from_email=None,
            recipient_list=[user.email],
        )
    except Exception:
        User.objects.filter(pk=user.pk).update(welcome_sent_at=None)
        logger.exception("welcome e-mail to %s failed", user.email)
        raise
    user.welcome_sent_at = now
    logger.info("welcome e-mail sent to %s", user.email)
    return True


def user_welcome_retry_pending(*, now: datetime) -> int:
    """Queue welcome e-mails that never went out; run periodically by Celery beat."""
    from accounts.tasks import send_welcome_email

    user_ids = list(selectors.users_awaiting_welcome(now=now).values_list("pk", flat=True))
    for user_id in user_ids:
        send_welcome_email.delay(user_id)
    if user_ids:
        logger.info("re-queued %d welcome e-mails", len(user_ids))
    return len(user_ids)

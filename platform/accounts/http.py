"""The request type of views behind ``@login_required``.

Django types ``request.user`` as ``User | AnonymousUser``; behind ``login_required`` it is always a signed-in
``User``. Annotating such views with :class:`AuthenticatedHttpRequest` says so once, for the type checker,
instead of a cast in every view (the pattern django-stubs documents).
"""

from __future__ import annotations

from django.http import HttpRequest

from accounts.models import User


class AuthenticatedHttpRequest(HttpRequest):
    """An ``HttpRequest`` whose user signed in; never instantiated, only used in annotations."""

    user: User

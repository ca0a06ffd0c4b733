"""Fixtures shared by every test folder that touches the portal's database."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup: None, django_db_blocker: Any) -> Iterator[None]:
    """pytest-django's test database, minus stray sessions at the end.

    Threads of the live hub and of `database_sync_to_async` may still hold a PostgreSQL session when the run
    ends; PostgreSQL then refuses to drop the test database and leaves it behind on the machine. Ending those
    sessions first lets teardown drop it.
    """
    yield
    from django.db import connection

    if connection.vendor != "postgresql":
        return
    with django_db_blocker.unblock(), connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )

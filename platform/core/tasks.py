"""Diagnostic tasks: let operators (and tests) see what a worker process really runs."""

from __future__ import annotations

import platform
import socket
import sys

from celery import shared_task


@shared_task
def runtime_info() -> dict[str, str]:
    """Report the worker's interpreter and where its `platform` module came from (a shadowing check)."""
    return {
        "hostname": socket.gethostname(),
        "python": sys.version.split()[0],
        "platform_module": platform.__file__ or "",
        "platform_system": platform.system(),
    }

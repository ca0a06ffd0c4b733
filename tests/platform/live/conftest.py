"""Fixtures for the live swarm tests: the Redis channel layer and volunteers' simulated nodes."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest
from django.test import Client
from django.utils import timezone
from live_agents import SimulatedNode, client_poster

from accounts.models import User
from projects.models import Project
from swarm import services as swarm_services

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture
def redis_layer(settings) -> None:
    """Channels over the real Redis layer (as in production), with this run's own prefix."""
    settings.CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {
                "hosts": [{"address": REDIS_URL, "socket_timeout": 30}],
                "prefix": f"{settings.CHANNELS_PREFIX}-live",
            },
        }
    }


def join_code(project: Project, user: User) -> str:
    _, code = swarm_services.join_code_create(project=project, user=user, now=timezone.now())
    return code


@pytest.fixture
def join_node() -> Callable[[Project, User], SimulatedNode]:
    """A node that joined `project` for `user` through the real join API (Django test client)."""

    def join(project: Project, user: User) -> SimulatedNode:
        return SimulatedNode(post=client_poster(Client())).join(join_code(project, user))

    return join

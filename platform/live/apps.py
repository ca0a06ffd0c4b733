from __future__ import annotations

from django.apps import AppConfig


class LiveConfig(AppConfig):
    """Live swarm views: per-project WebSocket channel with snapshots and coalesced diffs."""

    default_auto_field = "django.db.models.BigAutoField"
    name = "live"

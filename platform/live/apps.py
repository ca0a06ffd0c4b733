from __future__ import annotations

from typing import Any

from django.apps import AppConfig


class LiveConfig(AppConfig):
    """Live swarm views: per-project WebSocket channel with snapshots and coalesced diffs."""

    default_auto_field = "django.db.models.BigAutoField"
    name = "live"

    def ready(self) -> None:
        from django.db.models.signals import post_delete, post_save

        from projects.models import Project

        # A changed project must not be judged by what the viewer-access cache remembers of it.
        post_save.connect(_forget_project, sender=Project, dispatch_uid="live-forget-project-saved")
        post_delete.connect(_forget_project, sender=Project, dispatch_uid="live-forget-project-deleted")


def _forget_project(sender: Any, instance: Any, **kwargs: Any) -> None:
    from live.access_cache import viewer_access

    viewer_access.forget_project(slug=instance.slug, project_id=instance.pk)

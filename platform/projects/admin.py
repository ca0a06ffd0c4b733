from __future__ import annotations

from django.contrib import admin

from projects.models import Project


@admin.register(Project)
class ProjectAdmin(admin.ModelAdmin):
    list_display = [
        "title",
        "slug",
        "owner",
        "status",
        "dataset",
        "expert_architecture",
        "grid_shape",
        "created_at",
    ]
    list_filter = ["status", "dataset", "expert_architecture", "join_policy"]
    search_fields = ["title", "slug", "description", "owner__email"]
    readonly_fields = ["created_at", "updated_at", "status_changed_at"]
    raw_id_fields = ["owner"]

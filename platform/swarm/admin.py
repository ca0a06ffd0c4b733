from __future__ import annotations

from django.contrib import admin

from swarm.models import Alert, IssuedCredential, JoinCode, Node, NodeStateChange, ProjectSwarm, UserBan


@admin.register(ProjectSwarm)
class ProjectSwarmAdmin(admin.ModelAdmin):
    list_display = ["project", "gated", "observed_at", "observation_error"]
    readonly_fields = ["observed_at", "observation_error", "coverage", "announced"]


@admin.register(Node)
class NodeAdmin(admin.ModelAdmin):
    list_display = ["node_id", "project", "user", "state", "role", "agent_version", "last_heartbeat_at"]
    list_filter = ["state", "role", "project"]
    search_fields = ["node_id", "public_key", "user__email"]
    raw_id_fields = ["project", "user"]


@admin.register(NodeStateChange)
class NodeStateChangeAdmin(admin.ModelAdmin):
    list_display = ["node", "previous", "state", "reason", "at"]
    list_filter = ["state"]


@admin.register(IssuedCredential)
class IssuedCredentialAdmin(admin.ModelAdmin):
    list_display = ["cid", "node", "issued_at", "expires_at", "revoked_at"]


@admin.register(JoinCode)
class JoinCodeAdmin(admin.ModelAdmin):
    list_display = ["project", "user", "created_at", "expires_at", "used_at"]
    exclude = ["code_hash"]


@admin.register(Alert)
class AlertAdmin(admin.ModelAdmin):
    list_display = ["project", "kind", "severity", "message", "raised_at", "resolved_at"]
    list_filter = ["severity", "kind"]


admin.site.register(UserBan)

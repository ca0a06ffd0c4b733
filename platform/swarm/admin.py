"""Admin for swarms. Node state changes only through the swarm services (admin actions call `node_approve`,
`node_ban`), so every change is recorded, its rules hold (credentials revoked on a ban) and live viewers
see it; the state fields are read-only in the forms."""

from __future__ import annotations

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils import timezone

from accounts.models import User
from swarm import services
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
    readonly_fields = ["state", "state_changed_at", "state_reason", "approved_at"]
    actions = ["approve_nodes", "ban_nodes"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # a node exists once its agent joins with a code (swarm.services.agent_join)

    @admin.action(description="Approve selected pending nodes")
    def approve_nodes(self, request: HttpRequest, queryset: QuerySet[Node]) -> None:
        now, approved, actor = timezone.now(), 0, request.user
        assert isinstance(actor, User)  # the admin site admits only logged-in staff
        for node in queryset.select_related("project"):
            try:
                done = services.node_approve(node=node, actor=actor, now=now)
            except PermissionDenied as exc:
                self.message_user(request, f"Node {node.short_id}: {exc}", messages.ERROR)
                continue
            approved += done.approved_at == now
        self.message_user(request, f"{approved} pending node(s) approved; their agents get credentials now.")

    @admin.action(description="Ban selected nodes (revokes their credentials)")
    def ban_nodes(self, request: HttpRequest, queryset: QuerySet[Node]) -> None:
        now, reason, actor = timezone.now(), f"banned by an admin ({request.user})", request.user
        assert isinstance(actor, User)
        banned = 0
        for node in queryset.select_related("project"):
            try:
                services.node_ban(node=node, actor=actor, reason=reason, now=now)
                banned += 1
            except PermissionDenied as exc:
                self.message_user(request, f"Node {node.short_id}: {exc}", messages.ERROR)
        self.message_user(request, f"{banned} node(s) banned; their credentials are revoked.")


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


@admin.register(UserBan)
class UserBanAdmin(admin.ModelAdmin):
    """Bans are made by the "Ban from every swarm" user action (swarm.services.user_ban), which also bans
    the user's nodes and revokes their credentials; a row added here would do neither."""

    list_display = ["user", "reason", "banned_at"]
    readonly_fields = ["user", "reason", "banned_at"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

"""Admin for users: admins can change a user's role, staff flag and activity here, and ban a user from
every swarm (through swarm.services.user_ban, which bans their nodes and revokes their credentials)."""

from __future__ import annotations

from django.contrib import admin, messages
from django.contrib.auth.admin import UserAdmin as DjangoUserAdmin
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils import timezone

from accounts.forms import AdminUserChangeForm, AdminUserCreationForm
from accounts.models import User
from swarm import services as swarm_services


@admin.register(User)
class UserAdmin(DjangoUserAdmin):
    form = AdminUserChangeForm
    add_form = AdminUserCreationForm
    list_display = ["email", "display_name", "role", "is_active", "is_staff", "date_joined"]
    list_filter = ["role", "is_active", "is_staff", "is_superuser"]
    search_fields = ["email", "display_name"]
    ordering = ["email"]
    readonly_fields = ["date_joined", "last_login", "welcome_sent_at"]
    fieldsets = (
        (None, {"fields": ("email", "password")}),
        ("Profile", {"fields": ("display_name", "role")}),
        ("Permissions", {"fields": ("is_active", "is_staff", "is_superuser", "groups", "user_permissions")}),
        ("Dates", {"fields": ("date_joined", "last_login", "welcome_sent_at")}),
    )
    actions = ["ban_from_swarms"]
    add_fieldsets = (
        (None, {"classes": ("wide",), "fields": ("email", "display_name", "role", "password1", "password2")}),
    )

    @admin.action(description="Ban from every swarm (bans their nodes, revokes credentials)")
    def ban_from_swarms(self, request: HttpRequest, queryset: QuerySet[User]) -> None:
        now, actor = timezone.now(), request.user
        assert isinstance(actor, User)  # the admin site admits only logged-in staff
        for user in queryset:
            count = swarm_services.user_ban(
                user=user, actor=actor, reason=f"banned by an admin ({actor})", now=now
            )
            self.message_user(
                request, f"{user.display_name} banned; {count} node(s) banned.", messages.SUCCESS
            )

"""Admin views of credit: refusals (why receipts earned nothing) are what admins watch for cheating."""

from __future__ import annotations

from django.contrib import admin

from credit.models import CreditRefusal, NodeCredit, WorkReceipt


@admin.register(CreditRefusal)
class CreditRefusalAdmin(admin.ModelAdmin):
    list_display = ["project", "server", "reason", "count", "last_at", "last_detail"]
    list_filter = ["reason", "project"]
    readonly_fields = ["project", "server", "reason", "count", "last_at", "last_detail"]


@admin.register(WorkReceipt)
class WorkReceiptAdmin(admin.ModelAdmin):
    list_display = ["project", "server", "trainer", "minute", "forward", "backward", "flops", "claimed_flops"]
    list_filter = ["project"]
    raw_id_fields = ["project", "server", "trainer"]


@admin.register(NodeCredit)
class NodeCreditAdmin(admin.ModelAdmin):
    list_display = ["node", "total", "recent", "recent_at"]
    raw_id_fields = ["node"]

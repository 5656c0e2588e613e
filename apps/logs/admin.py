from django.contrib import admin

from apps.core.changelist import DateHierarchyAdmin
from apps.identities.channel_scope import UsableChannelsOnly
from apps.identities.scoped_pickers import UsablePickers

from .models import AuditEvent, LLMCall, RequestLog

# One product: the admin carries the gateway's name (its index links to the other staff tools).
admin.site.site_header = admin.site.site_title = "Agent Gateway"
admin.site.index_title = "Administration"


@admin.register(LLMCall)
class LLMCallAdmin(UsablePickers, UsableChannelsOnly, DateHierarchyAdmin, admin.ModelAdmin):
    """Read-only: the log is what happened."""

    list_display = ("created_at", "model", "provider", "status", "attempt", "total_tokens", "cost",
                    "latency_ms", "ttft_ms", "agent", "channel", "user")
    list_filter = ("status", "provider", "model", "channel", "agent")
    search_fields = ("model", "error", "message__id", "conversation__id")
    date_hierarchy = "created_at"
    list_select_related = ("agent", "channel", "user")

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False


@admin.register(RequestLog)
class RequestLogAdmin(UsablePickers, UsableChannelsOnly, DateHierarchyAdmin, admin.ModelAdmin):
    list_display = ("created_at", "channel_kind", "channel", "status_code", "rejection", "client_ip", "latency_ms")
    list_filter = ("status_code", "rejection", "channel_kind")
    search_fields = ("client_ip", "request_id", "user__username")
    date_hierarchy = "created_at"
    list_select_related = ("channel",)

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def usable_rows(self, ids):
        return RequestLog.on_channels(ids)

    def usable_row(self, obj, ids) -> bool:
        return obj.is_on_channels(ids)


@admin.register(AuditEvent)
class AuditEventAdmin(UsablePickers, DateHierarchyAdmin, admin.ModelAdmin):
    list_display = ("created_at", "action", "actor", "target_type", "target_id", "client_ip")
    list_filter = ("action", "target_type")
    search_fields = ("action", "target_id", "actor__username")
    date_hierarchy = "created_at"
    list_select_related = ("actor",)

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False

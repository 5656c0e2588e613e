from django.contrib import admin

from .models import LLMCall


@admin.register(LLMCall)
class LLMCallAdmin(admin.ModelAdmin):
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

"""Staff edit policies and IP rules, read usage, see each user's effective limits and reset quotas."""
from __future__ import annotations

from django.contrib import admin, messages
from django.forms.models import model_to_dict
from django.utils.html import format_html, format_html_join

from apps.core.client_ip import client_ip_for_request
from apps.logs.services import audit

from .limits import RateCheck
from .models import IpRule, QuotaPolicy, UsageDaily, UserQuota
from .policies import user_limits
from .selectors import budget_states, rate_state, usage_totals
from .services import quota_reset


class AuditedAdmin(admin.ModelAdmin):
    """Every change here changes who may do what: each save and delete is an audit event."""

    audit_name = ""

    def save_model(self, request, obj, form, change):
        before = model_to_dict(type(obj).objects.get(pk=obj.pk)) if change else None
        super().save_model(request, obj, form, change)
        audit(action=f"{self.audit_name}.{'changed' if change else 'created'}", actor=request.user, target=obj,
              before=_jsonable(before), after=_jsonable(model_to_dict(obj)), client_ip=client_ip_for_request(request))

    def delete_model(self, request, obj):
        audit(action=f"{self.audit_name}.deleted", actor=request.user, target=obj,
              before=_jsonable(model_to_dict(obj)), client_ip=client_ip_for_request(request))
        super().delete_model(request, obj)

    def delete_queryset(self, request, queryset):
        for obj in queryset:
            self.delete_model(request, obj)


def _jsonable(data):
    if data is None:
        return None
    return {k: v if isinstance(v, int | bool | type(None)) else str(v) for k, v in data.items()}


@admin.register(QuotaPolicy)
class QuotaPolicyAdmin(AuditedAdmin):
    audit_name = "quota_policy"
    list_display = ("__str__", "request_rate", "per_ip_rate", "tokens_per_day", "tokens_per_month", "cost_limit",
                    "cost_period", "enabled", "updated_at")
    list_filter = ("scope", "enabled", "role")
    search_fields = ("user__username", "api_key__prefix", "channel__slug", "note")
    raw_id_fields = ("user", "api_key", "channel")
    list_select_related = ("user", "api_key", "channel")
    fieldsets = (
        ("Whose limits", {"fields": ("scope", "role", "user", "api_key", "channel", "enabled", "note"),
                          "description": "Blank limits inherit: user → role → setting. Key and channel "
                                         "policies limit that key's or channel's own shared counters."}),
        ("Request rate", {"fields": ("request_rate", "per_ip_rate")}),
        ("Tokens and cost", {"fields": ("tokens_per_day", "tokens_per_month", "cost_limit", "cost_period")}),
    )


@admin.register(IpRule)
class IpRuleAdmin(AuditedAdmin):
    audit_name = "ip_rule"
    list_display = ("cidr", "action", "channel", "source", "enabled", "note", "created_at")
    list_filter = ("action", "enabled", "source", "channel")
    search_fields = ("cidr", "note")
    list_select_related = ("channel",)


@admin.register(UsageDaily)
class UsageDailyAdmin(admin.ModelAdmin):
    """The durable rollup: read-only."""

    list_display = ("date", "user", "api_key", "channel", "calls", "prompt_tokens", "completion_tokens",
                    "total_tokens", "cost")
    list_filter = ("channel",)
    search_fields = ("user__username",)
    date_hierarchy = "date"
    list_select_related = ("user", "api_key", "channel")

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False


@admin.register(UserQuota)
class UserQuotaAdmin(admin.ModelAdmin):
    """Each user's effective limits (and which policy gives them), live usage and what remains."""

    list_display = ("username", "role_name", "effective_rate", "budgets_summary", "tokens_today")
    search_fields = ("username", "email")
    list_filter = ("groups",)
    list_per_page = 50
    actions = ["reset_quota"]
    fields = ("username", "role_name", "effective_rate", "budget_table", "usage_table")
    readonly_fields = fields

    def get_queryset(self, request):
        return super().get_queryset(request).prefetch_related("groups")

    def has_add_permission(self, request) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False

    @admin.display(description="role")
    def role_name(self, obj) -> str:
        return obj.role

    @admin.display(description="request rate")
    def effective_rate(self, obj) -> str:
        limits = user_limits(obj)
        if not limits.request_rate:
            return "unlimited"
        state = rate_state(RateCheck("user", f"user:{obj.pk}", limits.request_rate, ""))
        return f"{limits.request_rate} ({limits.sources['request_rate']}); {state['used'] or 0} used this window"

    @admin.display(description="budgets: remaining / limit")
    def budgets_summary(self, obj) -> str:
        states = budget_states(user_limits(obj))
        if not states:
            return "no budget"
        return "; ".join(f"{s['meter']}/{s['period']}: {s['remaining']} / {s['limit']}"
                         + (" (used up)" if s["exhausted"] else "") for s in states)

    @admin.display(description="tokens today")
    def tokens_today(self, obj) -> int:
        return usage_totals(user=obj)["today"]["total_tokens"]

    @admin.display(description="budgets")
    def budget_table(self, obj):
        states = budget_states(user_limits(obj))
        if not states:
            return "No token or cost budget applies."
        rows = format_html_join(
            "", "<tr><td>{}/{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            ((s["meter"], s["period"], s["limit"], s["used"], s["reserved"], s["remaining"], s["resets_at"],
              s["source"]) for s in states),
        )
        return format_html("<table><tr><th>budget</th><th>limit</th><th>used</th><th>reserved</th>"
                           "<th>remaining</th><th>resets at</th><th>from</th></tr>{}</table>", rows)

    @admin.display(description="usage")
    def usage_table(self, obj):
        totals = usage_totals(user=obj)
        return format_html_join(
            "", "<p>{}: {} calls, {} tokens, cost {}</p>",
            ((name, t["calls"], t["total_tokens"], t["cost"]) for name, t in totals.items()),
        )

    @admin.action(description="Reset the selected users' token and cost quota", permissions=["reset"])
    def reset_quota(self, request, queryset):
        for user in queryset:
            quota_reset(user=user, actor=request.user, client_ip=client_ip_for_request(request))
        self.message_user(request, f"Quota reset for {queryset.count()} user(s).", messages.SUCCESS)

    def has_reset_permission(self, request) -> bool:
        return request.user.has_perm("quotas.reset_quota")

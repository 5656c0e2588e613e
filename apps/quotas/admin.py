"""Staff edit policies and IP rules, read usage, see each user's effective limits and reset quotas."""
from __future__ import annotations

import copy

from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied, ValidationError
from django.forms.models import construct_instance, model_to_dict
from django.utils.html import format_html, format_html_join

from apps.core.changelist import DateHierarchyAdmin
from apps.core.client_ip import client_ip_for_request
from apps.identities.channel_scope import UsableChannelsOrNone
from apps.identities.permissions import role_rank, user_can_use_channel
from apps.identities.privileges import outranks, refused
from apps.identities.roles import ROLE_ORDER
from apps.identities.scoped_pickers import UsablePickers
from apps.logs.services import audit

from .alerts import amount_text
from .ceiling import policy_change_beyond_own, reset_beyond_own
from .limits import RateCheck
from .models import BudgetAlert, IpRule, QuotaPolicy, UsageDaily, UserQuota
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


def may_set_limits_of(actor, *, user=None, role: str = "", channel=None, global_rule: bool = False) -> bool:
    """Whether a staff member who is not a superuser may set or lift these limits: a user's (or
    their API key's) only if they are someone else who holds no more than she does (her own would
    lift her own limits, a stronger user's throttle or block them by another name); a role's only
    below her own; a channel's only if she may use it; rules for every address, never."""
    if actor.is_superuser:
        return True
    if global_rule:
        return False
    if user is not None and (user.pk == actor.pk or outranks(user, actor)):
        return False
    if role and ROLE_ORDER.index(role) >= role_rank(actor):
        return False
    return channel is None or user_can_use_channel(actor, channel)


class LimitsOfOthersOnly:
    """A ModelAdmin mixin: rows whose limits the staff member may not set (``may_set_limits_of``)
    are read-only to her, and a form naming such a target, or giving limits beyond her own
    (``beyond_own``), is refused (audited)."""

    def targets(self, obj) -> dict:
        raise NotImplementedError

    def beyond_own(self, request, *, original, changed) -> list[str]:
        """The limits that saving ``changed`` over ``original`` (deleting it: ``changed`` None)
        would give beyond the staff member's own; [] where the model holds no such limits."""
        return []

    def _may_set(self, request, obj) -> bool:
        return may_set_limits_of(request.user, **self.targets(obj))

    def has_change_permission(self, request, obj=None) -> bool:
        return super().has_change_permission(request, obj) and (obj is None or self._may_set(request, obj))

    def has_delete_permission(self, request, obj=None) -> bool:
        return super().has_delete_permission(request, obj) and (obj is None or self._may_set(request, obj))

    def changeform_view(self, request, object_id=None, form_url="", extra_context=None):
        if request.method == "POST" and object_id:
            self._audit_refused_post(request, object_id, what="change these limits")
        return super().changeform_view(request, object_id, form_url, extra_context)

    # Deleting a row gives its subject what follows (a role's, a setting's): checked on deleting, not
    # in has_delete_permission, which also judges rows deleted along with their user.
    def delete_view(self, request, object_id, extra_context=None):
        if request.method == "POST":  # before the view's transaction: the refusal's audit stays
            row = self._audit_refused_post(request, object_id, what="delete these limits")
            self._refuse_deleting_beyond_own(request, [row])
        return super().delete_view(request, object_id, extra_context)

    def _audit_refused_post(self, request, object_id, *, what: str):
        """A POST on a row she may not set, which the view then answers 403: audited, as every
        refused staff action is (the page showed it read-only, so the POST was crafted). Returns
        the row (None: not found)."""
        row = self.get_object(request, unquote(object_id))
        if row is not None and not self._may_set(request, row):
            refused(request, what=what, target=self.targets(row).get("user"))
        return row

    def delete_queryset(self, request, queryset):  # the bulk delete action
        self._refuse_deleting_beyond_own(request, list(queryset))
        super().delete_queryset(request, queryset)

    def _refuse_deleting_beyond_own(self, request, rows) -> None:
        beyond = {row: fields for row in rows
                  if row is not None and (fields := self.beyond_own(request, original=row, changed=None))}
        for row, fields in beyond.items():
            refused(request, what="delete these limits", target=self.targets(row).get("user"), limits=fields)
        if beyond:
            raise PermissionDenied("You may not delete these limits: what would follow them is more generous "
                                   "than your own.")

    def get_form(self, request, obj=None, **kwargs):
        admin_ = self

        class Checked(super().get_form(request, obj, **kwargs)):
            def clean(self):
                cleaned = super().clean()
                if self.errors:
                    return cleaned
                wanted = construct_instance(self, copy.copy(self.instance))  # the row as it would be saved
                if not admin_._may_set(request, wanted):
                    refused(request, what="set these limits", target=admin_.targets(wanted).get("user"))
                    raise ValidationError("You may not set these limits: they are your own, or those of "
                                          "someone who holds more than you do, or of a channel, role or "
                                          "address range beyond yours.")
                stored = type(wanted).objects.filter(pk=wanted.pk).first() if wanted.pk else None
                if fields := admin_.beyond_own(request, original=stored, changed=wanted):
                    refused(request, what="give limits beyond her own", target=admin_.targets(wanted).get("user"),
                            limits=fields)
                    raise ValidationError(f"You may not give limits more generous than your own: {_named(fields)}.")
                return cleaned

        return Checked


def _named(fields: list[str]) -> str:
    return ", ".join(str(QuotaPolicy._meta.get_field(name).verbose_name) for name in fields)


def _jsonable(data):
    if data is None:
        return None
    return {k: v if isinstance(v, int | bool | type(None)) else str(v) for k, v in data.items()}


@admin.register(QuotaPolicy)
class QuotaPolicyAdmin(UsableChannelsOrNone, UsablePickers, LimitsOfOthersOnly, AuditedAdmin):
    audit_name = "quota_policy"
    list_display = ("__str__", "request_rate", "per_ip_rate", "tokens_per_day", "tokens_per_month", "cost_limit",
                    "cost_period", "enabled", "updated_at")
    list_filter = ("scope", "enabled", "role")
    search_fields = ("user__username", "api_key__prefix", "channel__slug", "note")
    raw_id_fields = ("user", "api_key")  # not the channel: a raw id would print any channel's name
    list_select_related = ("user", "api_key", "channel")
    fieldsets = (
        ("Whose limits", {"fields": ("scope", "role", "user", "api_key", "channel", "enabled", "note"),
                          "description": "Blank limits inherit: user → role → setting. Key and channel "
                                         "policies limit that key's or channel's own shared counters."}),
        ("Request rate", {"fields": ("request_rate", "per_ip_rate")}),
        ("Tokens and cost", {"fields": ("tokens_per_day", "tokens_per_month", "cost_limit", "cost_period")}),
    )

    def targets(self, obj) -> dict:
        owner = obj.user if obj.user_id else (obj.api_key.user if obj.api_key_id else None)
        return {"user": owner, "role": obj.role if obj.scope == QuotaPolicy.Scope.ROLE else "",
                "channel": obj.channel if obj.channel_id else None}

    def beyond_own(self, request, *, original, changed) -> list[str]:
        return policy_change_beyond_own(request.user, original=original, changed=changed)


@admin.register(IpRule)
class IpRuleAdmin(UsableChannelsOrNone, UsablePickers, LimitsOfOthersOnly, AuditedAdmin):
    audit_name = "ip_rule"
    list_display = ("cidr", "action", "channel", "source", "enabled", "note", "created_at")
    list_filter = ("action", "enabled", "source", "channel")
    search_fields = ("cidr", "note")
    list_select_related = ("channel",)

    def targets(self, obj) -> dict:
        # A rule for every channel can shut every superuser out of the admin: superusers' own.
        return {"channel": obj.channel, "global_rule": obj.channel_id is None}


@admin.register(UsageDaily)
class UsageDailyAdmin(UsableChannelsOrNone, UsablePickers, DateHierarchyAdmin, admin.ModelAdmin):
    """The durable rollup: read-only. Staff find the usage on channels they may use, and what was
    spent on none (a channel deleted since)."""

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


@admin.register(BudgetAlert)
class BudgetAlertAdmin(UsableChannelsOrNone, UsablePickers, DateHierarchyAdmin, admin.ModelAdmin):
    """Budgets that reached an alert percent of their limit (GATEWAY_BUDGET_ALERT_PERCENTS), and
    whether each went out to the webhook: read-only. Staff find those of channels they may use,
    and of users and keys."""

    list_display = ("created_at", "user", "api_key", "channel", "budget", "percent", "used_of_limit", "delivery")
    list_filter = ("percent", "meter", "period", "channel")
    search_fields = ("user__username", "subject")
    date_hierarchy = "created_at"
    list_select_related = ("user", "api_key", "channel")

    @admin.display(description="budget")
    def budget(self, obj) -> str:
        return f"{obj.meter} per {obj.period} from {obj.period_start:%Y-%m-%d}"

    @admin.display(description="used / limit")
    def used_of_limit(self, obj) -> str:
        return f"{amount_text(obj.meter, obj.used)} / {amount_text(obj.meter, obj.limit)}"

    @admin.display(description="webhook")
    def delivery(self, obj) -> str:
        if obj.sent_at:
            return f"sent {obj.sent_at:%Y-%m-%d %H:%M:%S} UTC"
        if not obj.attempts:
            return "not sent (no webhook set)" if obj.next_attempt_at is None else "due"
        return f"not sent after {obj.attempts} attempts: {obj.last_error}"

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False


@admin.register(UserQuota)
class UserQuotaAdmin(UsablePickers, admin.ModelAdmin):
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
        barred = [user for user in queryset if not may_set_limits_of(request.user, user=user)]
        if barred:
            for user in barred:
                refused(request, what="reset this quota", target=user)
            self.message_user(request, "Refused: your own quota, or that of someone who holds more than you do. "
                              "Nothing was reset.", messages.ERROR)
            return
        beyond = {user: fields for user in queryset if (fields := reset_beyond_own(request.user, user))}
        if beyond:
            for user, fields in beyond.items():
                refused(request, what="reset this quota beyond her own", target=user, limits=fields)
            whose = "; ".join(f"{user}: {_named(fields)}" for user, fields in beyond.items())
            self.message_user(request, "Refused: after a reset they could spend more this period than your own "
                              f"budget allows ({whose}). Nothing was reset.", messages.ERROR)
            return
        for user in queryset:
            quota_reset(user=user, actor=request.user, client_ip=client_ip_for_request(request))
        self.message_user(request, f"Quota reset for {queryset.count()} user(s).", messages.SUCCESS)

    def has_reset_permission(self, request) -> bool:
        return request.user.has_perm("quotas.reset_quota")

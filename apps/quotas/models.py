"""Traffic and spend policies (admin-editable), IP rules, and the durable usage rollup."""
from __future__ import annotations

import ipaddress
import re

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models

from apps.identities.models import User
from apps.identities.roles import ROLE_ORDER

RATE_RE = re.compile(r"(\d+)/(\d*)([smhd])")
PERIOD_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_RATE_PERIOD_SECONDS = 366 * 86400


def parse_rate(rate: str) -> tuple[int, int]:
    """``"20/m"`` → (20, 60): requests, per so many seconds; ``"5/10s"`` → (5, 10). ValueError
    otherwise, and for a period of 0 or over a year."""
    match = RATE_RE.fullmatch(rate)
    seconds = match and int(match.group(2) or 1) * PERIOD_SECONDS[match.group(3)]
    if not seconds or seconds > MAX_RATE_PERIOD_SECONDS:
        raise ValueError(f"{rate!r} is not a rate like 20/m, 100/h, 5/10s or 1000/d (a period of up to a year).")
    return int(match.group(1)), seconds


def validate_rate(value: str) -> None:
    """A request rate: ``20/m``, ``100/h``, ``5/10s``, ``1000/d``."""
    if value:
        try:
            parse_rate(value)
        except ValueError as exc:
            raise ValidationError(str(exc)) from None


def validate_cidr(value: str) -> None:
    try:
        ipaddress.ip_network(value.strip(), strict=False)
    except ValueError as exc:
        raise ValidationError(f"{value!r} is not an IPv4/IPv6 address or CIDR network.") from exc


class Period(models.TextChoices):
    DAY = "day", "Day (UTC)"
    MONTH = "month", "Month (UTC)"


class QuotaPolicy(models.Model):
    """Limits for one subject. A blank field sets nothing: the next policy down applies.

    Users: the user's own policy, else their role's policy, else the settings default
    (GATEWAY_USER_RATE; budgets have no default). Each user has their own counters.
    API key and channel policies limit that key's / that channel's own shared counters,
    in addition to the user's.
    """

    class Scope(models.TextChoices):
        ROLE = "role", "Role default"
        USER = "user", "User"
        API_KEY = "api_key", "API key"
        CHANNEL = "channel", "Channel"

    scope = models.CharField(max_length=16, choices=Scope.choices)
    role = models.CharField(max_length=32, blank=True, choices=[(r, r) for r in ROLE_ORDER])
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.CASCADE, related_name="quota_policies"
    )
    api_key = models.ForeignKey(
        "identities.ApiKey", null=True, blank=True, on_delete=models.CASCADE, related_name="quota_policies"
    )
    channel = models.ForeignKey(
        "connectors.Channel", null=True, blank=True, on_delete=models.CASCADE, related_name="quota_policies"
    )
    request_rate = models.CharField(
        max_length=32, blank=True, validators=[validate_rate],
        help_text="Requests per period, e.g. 20/m, 500/h, 5/10s, 1000/d.",
    )
    per_ip_rate = models.CharField(
        max_length=32, blank=True, validators=[validate_rate],
        help_text="Channel policies only: requests per client address on this channel (else GATEWAY_IP_RATE).",
    )
    tokens_per_day = models.PositiveBigIntegerField(null=True, blank=True)
    tokens_per_month = models.PositiveBigIntegerField(null=True, blank=True)
    cost_limit = models.DecimalField(
        max_digits=14, decimal_places=4, null=True, blank=True,
        help_text="Money per cost period, in the currency of the model prices.",
    )
    cost_period = models.CharField(max_length=8, choices=Period.choices, default=Period.MONTH)
    enabled = models.BooleanField(default=True)
    note = models.CharField(max_length=200, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = "quota policy"
        verbose_name_plural = "quota policies"
        ordering = ["scope", "role"]
        constraints = [
            models.UniqueConstraint(
                fields=["role"], condition=models.Q(scope="role"), name="quota_policy_one_per_role"
            ),
            models.UniqueConstraint(fields=["user"], name="quota_policy_one_per_user"),
            models.UniqueConstraint(fields=["api_key"], name="quota_policy_one_per_api_key"),
            models.UniqueConstraint(fields=["channel"], name="quota_policy_one_per_channel"),
        ]

    def __str__(self) -> str:
        return f"{self.get_scope_display()}: {self.subject_label}"

    @property
    def subject_label(self) -> str:
        target = {"role": self.role, "user": self.user, "api_key": self.api_key, "channel": self.channel}
        return str(target.get(self.scope) or "?")

    def clean(self) -> None:
        targets = {"role": bool(self.role), "user": self.user_id is not None,
                   "api_key": self.api_key_id is not None, "channel": self.channel_id is not None}
        chosen = [name for name, present in targets.items() if present]
        if chosen != [self.scope]:
            raise ValidationError(
                f"A {self.get_scope_display()} policy names exactly its {self.scope.replace('_', ' ')}, nothing else."
            )
        if self.per_ip_rate and self.scope != self.Scope.CHANNEL:
            raise ValidationError({"per_ip_rate": "Only channel policies set a per-address rate."})


class IpRule(models.Model):
    """Allow or deny a network, everywhere (no channel) or on one channel.

    A matching deny always refuses. Where allow rules exist (globally, or on the channel) the
    address must match one of them. See README "Traffic and spend control".
    """

    class Action(models.TextChoices):
        ALLOW = "allow", "Allow"
        DENY = "deny", "Deny"

    channel = models.ForeignKey(
        "connectors.Channel", null=True, blank=True, on_delete=models.CASCADE, related_name="ip_rules",
        help_text="Blank: every channel.",
    )
    action = models.CharField(max_length=8, choices=Action.choices)
    cidr = models.CharField(max_length=64, validators=[validate_cidr], help_text="e.g. 203.0.113.0/24 or 2001:db8::/32")
    source = models.CharField(
        max_length=64, blank=True, default="manual",
        help_text="Where the range came from (manual, or a platform's published list).",
    )
    note = models.CharField(max_length=200, blank=True)
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name = "IP rule"
        ordering = ["channel_id", "action", "cidr"]

    def __str__(self) -> str:
        return f"{self.action} {self.cidr} on {self.channel or 'every channel'}"

    def save(self, *args, **kwargs):
        self.cidr = str(ipaddress.ip_network(self.cidr.strip(), strict=False))
        super().save(*args, **kwargs)

    @property
    def network(self):
        return ipaddress.ip_network(self.cidr, strict=False)


class UsageDaily(models.Model):
    """Model usage per day, user, API key and channel: the durable record behind the live counters.

    Written by the agent run when a model call settles (off the request path); the live Redis
    counters are re-seeded from these rows when they are missing.
    """

    date = models.DateField()
    key = models.CharField(
        max_length=120, editable=False,
        help_text="user:api_key:channel ids, '-' for none: one row per combination and day.",
    )
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.CASCADE, related_name="+"
    )
    api_key = models.ForeignKey(
        "identities.ApiKey", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    channel = models.ForeignKey(
        "connectors.Channel", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    calls = models.PositiveIntegerField(default=0)
    prompt_tokens = models.PositiveBigIntegerField(default=0)
    completion_tokens = models.PositiveBigIntegerField(default=0)
    total_tokens = models.PositiveBigIntegerField(default=0)
    cost = models.DecimalField(max_digits=16, decimal_places=6, default=0)

    class Meta:
        verbose_name = "daily usage"
        verbose_name_plural = "daily usage"
        ordering = ["-date"]
        constraints = [models.UniqueConstraint(fields=["date", "key"], name="usage_daily_one_row_per_key")]
        indexes = [
            models.Index(fields=["user", "date"]),
            models.Index(fields=["api_key", "date"]),
            models.Index(fields=["channel", "date"]),
        ]

    def __str__(self) -> str:
        return f"{self.date} {self.user_id} {self.total_tokens} tokens"


class QuotaCredit(models.Model):
    """Usage forgiven by a staff reset: subtracted when a counter is re-seeded from the rollup."""

    subject = models.CharField(max_length=80, help_text='e.g. "user:<uuid>", "api_key:7", "channel:2"')
    meter = models.CharField(max_length=16)
    period = models.CharField(max_length=8, choices=Period.choices)
    period_start = models.DateField()
    amount = models.BigIntegerField()
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        indexes = [models.Index(fields=["subject", "meter", "period", "period_start"])]

    def __str__(self) -> str:
        return f"{self.subject} {self.meter}/{self.period} -{self.amount}"


class UserQuota(User):
    """Staff view of each user's effective limits and remaining quota (admin only, no table)."""

    class Meta:
        proxy = True
        verbose_name = "user quota"
        permissions = [("reset_quota", "Can reset a user's quota")]


class UnsettledUsage(models.Model):
    """A model call whose usage did not reach the live counters: the ledger's store (Redis) failed
    as the call was settled. The call's usage is in the rollup all the same (written with its LLM
    call row); recovery drops these counters once the store answers, so the next admission re-seeds
    them from the rollup: the database's record of the call wins (apps.quotas.budgets)."""

    counter_keys = models.JSONField(help_text="The live counters the call reserved on.")
    llm_call = models.ForeignKey("logs.LLMCall", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name = "unsettled usage"
        verbose_name_plural = "unsettled usage"
        ordering = ["created_at"]

    def __str__(self) -> str:
        return f"unsettled since {self.created_at:%Y-%m-%d %H:%M:%S}: {len(self.counter_keys)} counters"


class BudgetAlert(models.Model):
    """A budget reached one of GATEWAY_BUDGET_ALERT_PERCENTS of its limit in a period. Recorded by the
    settlement that crossed the mark, once per budget, period, limit and percent; sent to
    GATEWAY_BUDGET_ALERT_WEBHOOK_URL, when one is set, by ``quotas.send_budget_alerts`` (apps.quotas.alerts)."""

    counter = models.CharField(max_length=200, editable=False, help_text="The budget and period: its live counter.")
    percent = models.PositiveSmallIntegerField()
    subject = models.CharField(max_length=80, help_text='e.g. "user:<uuid>", "api_key:7", "channel:2"')
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    api_key = models.ForeignKey(
        "identities.ApiKey", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    channel = models.ForeignKey(
        "connectors.Channel", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    meter = models.CharField(max_length=16, help_text="tokens, or cost (in millionths of the price currency)")
    period = models.CharField(max_length=8, choices=Period.choices)
    period_start = models.DateField()
    limit = models.BigIntegerField()
    used = models.BigIntegerField(help_text="Used once the call that crossed the mark was booked.")
    created_at = models.DateTimeField(auto_now_add=True)
    # Delivery to the webhook (none set: nothing is sent, and these stay empty).
    sent_at = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveSmallIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    last_error = models.CharField(max_length=200, blank=True)

    class Meta:
        ordering = ["-created_at"]
        # The limit too: staff raising a budget that filled up are told when it fills up again.
        constraints = [models.UniqueConstraint(fields=["counter", "limit", "percent"],
                                               name="budget_alert_once_per_period_and_limit")]
        indexes = [models.Index(fields=["sent_at", "next_attempt_at"])]

    def __str__(self) -> str:
        return f"{self.subject} reached {self.percent}% of its {self.meter} per {self.period}"

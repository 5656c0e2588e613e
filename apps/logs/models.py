"""What happened, for debugging, cost analysis and audit."""
from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone


class LLMCall(models.Model):
    """One attempt at one model call."""

    class Status(models.TextChoices):
        OK = "ok", "OK"
        ERROR = "error", "Error"

    message = models.ForeignKey(
        "conversations.Message", null=True, on_delete=models.SET_NULL, related_name="llm_calls"
    )
    conversation = models.ForeignKey(
        "conversations.Conversation", null=True, on_delete=models.SET_NULL, related_name="+"
    )
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    channel = models.ForeignKey(
        "connectors.Channel", null=True, on_delete=models.SET_NULL, related_name="+"
    )
    agent = models.ForeignKey("agents.Agent", null=True, on_delete=models.SET_NULL, related_name="+")
    api_key = models.ForeignKey(
        "identities.ApiKey", null=True, blank=True, on_delete=models.SET_NULL, related_name="+",
        help_text="The API key that sent the message, if it came through the API.",
    )
    request_id = models.CharField(max_length=64, blank=True)
    model = models.CharField(max_length=100)
    provider = models.CharField(max_length=64)
    attempt = models.PositiveSmallIntegerField(default=1)
    prompt_tokens = models.PositiveIntegerField(default=0)
    completion_tokens = models.PositiveIntegerField(default=0)
    total_tokens = models.PositiveIntegerField(default=0)
    cost = models.DecimalField(max_digits=14, decimal_places=6, default=0)
    latency_ms = models.PositiveIntegerField(default=0)
    ttft_ms = models.PositiveIntegerField(null=True, blank=True)
    status = models.CharField(max_length=8, choices=Status.choices)
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        verbose_name = "LLM call"
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["status", "created_at"]),
            # The conversation view lists a conversation's calls in order.
            models.Index(fields=["conversation", "created_at"]),
        ]
        permissions = [("view_dashboard", "Can view the logs dashboards")]

    def __str__(self) -> str:
        return f"{self.model} {self.status} {self.total_tokens} tokens"


class RequestLog(models.Model):
    """One inbound request at an entry point: accepted or refused, and why."""

    channel = models.ForeignKey(
        "connectors.Channel", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    channel_kind = models.CharField(max_length=32, blank=True)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    message = models.ForeignKey(
        "conversations.Message", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    api_key = models.ForeignKey(
        "identities.ApiKey", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    status_code = models.PositiveSmallIntegerField()
    rejection = models.CharField(
        max_length=64, blank=True, db_index=True,
        help_text="The error code when refused (rate_limited, unauthenticated, ...); empty if accepted.",
    )
    client_ip = models.GenericIPAddressField(null=True, blank=True)
    latency_ms = models.PositiveIntegerField(default=0)
    request_id = models.CharField(max_length=64, blank=True, db_index=True)
    # Set by the entry point (rows are written in batches, after the request).
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["rejection", "created_at"])]

    def __str__(self) -> str:
        return f"{self.channel_kind} {self.status_code} {self.rejection}"

    @staticmethod
    def on_channels(ids) -> models.Q:
        """The rows a staff member who may use the channels ``ids`` may read: those channels', and
        requests refused before any channel was known (they name no channel and no message)."""
        return models.Q(channel_id__in=ids) | models.Q(channel__isnull=True, message__isnull=True)

    def is_on_channels(self, ids) -> bool:
        """``on_channels`` for one row in hand."""
        return self.channel_id in ids or (self.channel_id is None and self.message_id is None)


class AuditEvent(models.Model):
    """A security-relevant event: refusals, changes to roles/keys/quotas/blocks, merges."""

    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+",
        help_text="Who did it (staff member, or the user who was refused).",
    )
    action = models.CharField(max_length=64, db_index=True, help_text="e.g. tool.refused, apikey.revoked")
    target_type = models.CharField(max_length=64, blank=True)
    target_id = models.CharField(max_length=64, blank=True)
    before = models.JSONField(null=True, blank=True)
    after = models.JSONField(null=True, blank=True)
    detail = models.JSONField(default=dict, blank=True)
    client_ip = models.GenericIPAddressField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["target_type", "target_id"])]

    def __str__(self) -> str:
        return f"{self.action} {self.target_type}:{self.target_id}"


# --- Daily rollups: what the dashboards' charts and cost tables read -------------------------
# Rebuilt per day from the raw rows by a beat task (apps.logs.rollups), so a dashboard reads a
# few thousand rollup rows instead of scanning millions of raw ones, and raw rows can be purged.


class CallMeasures(models.Model):
    """What a call rollup row sums."""

    calls = models.PositiveIntegerField(default=0)
    failed_calls = models.PositiveIntegerField(default=0)
    prompt_tokens = models.BigIntegerField(default=0)
    completion_tokens = models.BigIntegerField(default=0)
    total_tokens = models.BigIntegerField(default=0)
    cost = models.DecimalField(max_digits=18, decimal_places=6, default=0)
    latency_ms_total = models.BigIntegerField(default=0)

    class Meta:
        abstract = True


class DailyCallStats(CallMeasures):
    """Model calls of one day per (channel, agent, model, provider): a few dozen rows a day."""

    day = models.DateField()
    channel = models.ForeignKey(
        "connectors.Channel", null=True, on_delete=models.SET_NULL, related_name="+", db_constraint=False
    )
    agent = models.ForeignKey(
        "agents.Agent", null=True, on_delete=models.SET_NULL, related_name="+", db_constraint=False
    )
    model = models.CharField(max_length=100)
    provider = models.CharField(max_length=64)

    class Meta:
        verbose_name_plural = "daily call stats"
        indexes = [models.Index(fields=["day"])]

    def __str__(self) -> str:
        return f"{self.day} {self.model}: {self.calls} calls"


class DailySpenderStats(CallMeasures):
    """Model calls of one day per (user, API key): one row per active spender a day.

    Kept apart from DailyCallStats so the per-model/agent/channel rollup stays tiny however many
    users there are."""

    day = models.DateField()
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+", db_constraint=False
    )
    api_key = models.ForeignKey(
        "identities.ApiKey", null=True, on_delete=models.SET_NULL, related_name="+", db_constraint=False
    )

    class Meta:
        verbose_name_plural = "daily spender stats"
        indexes = [models.Index(fields=["day"])]

    def __str__(self) -> str:
        return f"{self.day} {self.user_id}: {self.cost}"


class DailyMessageStats(models.Model):
    """Messages of one day on one channel: inbound, replies, failures, active users, reply latency."""

    day = models.DateField()
    channel = models.ForeignKey(
        "connectors.Channel", null=True, on_delete=models.SET_NULL, related_name="+", db_constraint=False
    )
    inbound = models.PositiveIntegerField(default=0)
    replies = models.PositiveIntegerField(default=0)
    failures = models.PositiveIntegerField(default=0)
    active_users = models.PositiveIntegerField(default=0)
    latency_buckets = models.JSONField(
        default=list, help_text="Reply latency histogram: counts per bound of LATENCY_BUCKETS_MS (+ overflow).",
    )

    class Meta:
        verbose_name_plural = "daily message stats"
        indexes = [models.Index(fields=["day"])]

    def __str__(self) -> str:
        return f"{self.day} channel {self.channel_id}: {self.inbound} in"


class DailyRequestStats(models.Model):
    """Inbound requests of one day per (channel, status code, rejection reason)."""

    day = models.DateField()
    channel = models.ForeignKey(
        "connectors.Channel", null=True, on_delete=models.SET_NULL, related_name="+", db_constraint=False
    )
    channel_kind = models.CharField(max_length=32, blank=True)
    status_code = models.PositiveSmallIntegerField()
    rejection = models.CharField(max_length=64, blank=True)
    requests = models.PositiveIntegerField(default=0)
    latency_ms_total = models.BigIntegerField(default=0)

    class Meta:
        verbose_name_plural = "daily request stats"
        indexes = [models.Index(fields=["day"])]

    def __str__(self) -> str:
        return f"{self.day} {self.channel_kind} {self.status_code}: {self.requests}"


class RollupMark(models.Model):
    """How far the rollups of one day reach: rows created before ``covered_until`` are counted.

    A past day is covered to its end; today to the last rebuild minus GATEWAY_LOG_ROLLUP_LAG_SECONDS.
    The overview adds today's raw rows from there on (a few minutes of rows, through the
    created_at indexes), so it is live without scanning the whole day."""

    day = models.DateField(unique=True)
    covered_until = models.DateTimeField()

    def __str__(self) -> str:
        return f"{self.day} up to {self.covered_until}"

"""What happened, for debugging, cost analysis and audit."""
from __future__ import annotations

from django.conf import settings
from django.db import models


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
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        verbose_name = "LLM call"
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["status", "created_at"])]

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
    status_code = models.PositiveSmallIntegerField()
    rejection = models.CharField(
        max_length=64, blank=True, db_index=True,
        help_text="The error code when refused (rate_limited, unauthenticated, ...); empty if accepted.",
    )
    client_ip = models.GenericIPAddressField(null=True, blank=True)
    latency_ms = models.PositiveIntegerField(default=0)
    request_id = models.CharField(max_length=64, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["rejection", "created_at"])]

    def __str__(self) -> str:
        return f"{self.channel_kind} {self.status_code} {self.rejection}"


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

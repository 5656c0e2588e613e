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

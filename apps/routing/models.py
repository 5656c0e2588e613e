"""Routing rules: which agent answers a message. See router.py for how they are applied."""
from __future__ import annotations

import re

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models

from apps.connectors.registry import KIND_CHOICES
from apps.identities.roles import ROLE_ORDER

from .patterns import pattern_problem

ROLE_CHOICES = [(role, role.capitalize()) for role in ROLE_ORDER]
COMMAND_RE = re.compile(r"^[a-z0-9][a-z0-9_\-]{0,31}$")


class Route(models.Model):
    """A rule: when every condition set on it holds, its agent answers. Empty conditions match
    anything. Rules are tried by ascending priority; the first match wins."""

    name = models.CharField(max_length=100)
    priority = models.PositiveIntegerField(default=100, db_index=True, help_text="Lower runs first.")
    enabled = models.BooleanField(default=True)
    agent = models.ForeignKey("agents.Agent", on_delete=models.CASCADE, related_name="routes")
    reroutes = models.BooleanField(
        default=False,
        help_text="Also applies to conversations that already have an agent, moving them to this one. "
        "Otherwise the rule only picks the agent of a new conversation (conversations stick).",
    )
    # conditions
    channel = models.ForeignKey(
        "connectors.Channel", null=True, blank=True, on_delete=models.CASCADE, related_name="routes"
    )
    channel_kind = models.CharField(max_length=32, blank=True, choices=KIND_CHOICES)
    sender_role = models.CharField(
        max_length=16, blank=True, choices=ROLE_CHOICES, help_text="The sender has this role."
    )
    sender_group = models.ForeignKey(
        "auth.Group", null=True, blank=True, on_delete=models.CASCADE, related_name="+",
        help_text="The sender is in this group.",
    )
    keyword = models.CharField(max_length=100, blank=True, help_text="The text contains this (any case).")
    pattern = models.CharField(
        max_length=300, blank=True, help_text="A regular expression the text matches (searched, any case)."
    )
    command = models.CharField(
        max_length=32, blank=True,
        help_text='The text starts with this command, e.g. "billing" matches "/billing my invoice".',
    )
    metadata = models.JSONField(
        default=dict, blank=True,
        help_text='Conversation/message metadata must hold these values, e.g. {"plan": "pro"}.',
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["priority", "id"]

    def __str__(self) -> str:
        return f"{self.priority}: {self.name} → {self.agent_id and self.agent.slug}"

    def clean(self) -> None:
        errors = {}
        if self.pattern and (problem := pattern_problem(self.pattern)):
            errors["pattern"] = problem
        if self.command:
            self.command = self.command.lstrip("/").lower()
            if not COMMAND_RE.match(self.command):
                errors["command"] = "Letters, digits, '-' and '_' only (without the slash), up to 32."
        if not isinstance(self.metadata, dict):
            errors["metadata"] = "A JSON object of key → value."
        if errors:
            raise ValidationError(errors)


class Handoff(models.Model):
    """A staff member has taken a conversation over: the agent does not answer while it is open
    (``ended_at`` empty). Kept afterwards as the record of who handled what, when."""

    conversation = models.ForeignKey(
        "conversations.Conversation", on_delete=models.CASCADE, related_name="handoffs"
    )
    staff = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="handoffs"
    )
    started_at = models.DateTimeField(auto_now_add=True)
    ended_at = models.DateTimeField(null=True, blank=True)
    ended_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        ordering = ["-started_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["conversation"], condition=models.Q(ended_at__isnull=True), name="one_open_handoff"
            )
        ]

    def __str__(self) -> str:
        return f"{self.conversation_id} by {self.staff} ({'open' if self.ended_at is None else 'closed'})"

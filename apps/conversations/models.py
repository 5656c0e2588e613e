"""Conversations and their messages, inbound and outbound."""
from __future__ import annotations

import uuid

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models

# In an outbound reply's ``control``: see Message.follows_up.
FOLLOW_UP_KEY = "follow_up"
# In an outbound reply's ``control``: why the model stopped, when not "stop" (e.g. "length": cut at
# max_tokens); the OpenAI face reports it as the choice's finish_reason.
FINISH_REASON_KEY = "finish_reason"
# In an inbound message's ``control``: the id of a person's reply to a later message that answers
# it too (a handoff); its own reply, if any, is the agent's.
ANSWERED_BY_KEY = "answered_by"
# An outbound reply no model wrote: a person's in a handoff (Message.by_agent is its negation).
PERSONS_REPLY = models.Q(model="")


class Conversation(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    channel = models.ForeignKey(
        "connectors.Channel", on_delete=models.PROTECT, related_name="conversations"
    )
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="conversations"
    )
    agent = models.ForeignKey(
        "agents.Agent", null=True, blank=True, on_delete=models.SET_NULL,
        related_name="conversations", help_text="The agent this conversation sticks to.",
    )
    external_thread_id = models.CharField(
        max_length=255, blank=True, help_text="The channel's own thread/chat id, if any."
    )
    metadata = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    last_message_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-last_message_at"]
        indexes = [
            models.Index(fields=["channel", "user", "-last_message_at"]),
            # Slack, WeCom and CRM messages find their conversation by the channel's thread id.
            models.Index(fields=["channel", "external_thread_id"], name="conversation_thread"),
        ]
        constraints = [
            # One conversation per platform thread, even when its first messages arrive at once
            # (pipeline.persist: the one that loses joins the winner's).
            models.UniqueConstraint(fields=["channel", "external_thread_id"],
                                    condition=~models.Q(external_thread_id=""), name="one_conversation_per_thread"),
        ]

    def __str__(self) -> str:
        return f"{self.channel.slug} / {self.user} / {self.id}"

    def clean(self) -> None:
        # Routing rules read it as key → value (apps.routing): a list or a number would break every message.
        if not isinstance(self.metadata, dict):
            raise ValidationError({"metadata": "A JSON object of key → value."})


class Direction(models.TextChoices):
    INBOUND = "in", "Inbound"
    OUTBOUND = "out", "Outbound"


class Status(models.TextChoices):
    # inbound lifecycle
    ACCEPTED = "accepted", "Accepted"
    PROCESSING = "processing", "Processing"
    ANSWERED = "answered", "Answered"
    FAILED = "failed", "Failed"
    # outbound lifecycle
    PENDING = "pending", "Pending delivery"
    SENT = "sent", "Sent"


class Message(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    conversation = models.ForeignKey(
        Conversation, on_delete=models.CASCADE, related_name="messages"
    )
    channel = models.ForeignKey(
        "connectors.Channel", on_delete=models.PROTECT, related_name="messages"
    )
    direction = models.CharField(max_length=3, choices=Direction.choices)
    status = models.CharField(max_length=16, choices=Status.choices)
    sender = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
        related_name="+", help_text="Inbound: the speaker. Outbound: a human agent, if any.",
    )
    # NULL, not "": messages without a channel id must not collide in the dedupe constraint.
    external_id = models.CharField(  # noqa: DJ001
        max_length=255, null=True, blank=True,
        help_text="The channel's own event/message id: the dedupe key.",
    )
    external_user_id = models.CharField(max_length=255, blank=True)
    text = models.TextField()
    attachments = models.JSONField(default=list, blank=True)
    metadata = models.JSONField(default=dict, blank=True)
    control = models.JSONField(
        default=dict, blank=True,
        help_text="What the gateway decided (thread key, requested agent, streaming, a face request's "
                  "history); no client can set it.",
    )
    raw_payload = models.JSONField(null=True, blank=True)
    channel_timestamp = models.FloatField(null=True, blank=True)
    reply_to = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="replies"
    )
    agent = models.ForeignKey(
        "agents.Agent", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    # outbound: what produced it
    model = models.CharField(max_length=100, blank=True)
    prompt_tokens = models.PositiveIntegerField(null=True, blank=True)
    completion_tokens = models.PositiveIntegerField(null=True, blank=True)
    total_tokens = models.PositiveIntegerField(null=True, blank=True)
    latency_ms = models.PositiveIntegerField(null=True, blank=True)
    # inbound: where it came from, for the logs (the agent run logs under the same request id)
    request_id = models.CharField(max_length=64, blank=True, db_index=True)
    api_key = models.ForeignKey(
        "identities.ApiKey", null=True, blank=True, on_delete=models.SET_NULL, related_name="+",
        help_text="The API key that sent it, if it came through the API.",
    )
    # inbound: agent run bookkeeping
    attempts = models.PositiveSmallIntegerField(default=0)
    lease_until = models.DateTimeField(null=True, blank=True)
    error_code = models.CharField(max_length=64, blank=True)
    error_message = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["channel", "external_id"], name="message_dedupe_key",
                condition=models.Q(external_id__isnull=False),
            ),
            # One agent reply per inbound message, however often the task is redelivered
            # (Message.by_agent: what tells it apart whoever or whatever is deleted later).
            models.UniqueConstraint(
                fields=["reply_to"], name="one_agent_reply_per_message",
                condition=models.Q(direction="out") & ~PERSONS_REPLY,
            ),
        ]
        indexes = [
            models.Index(fields=["conversation", "created_at"]),
            models.Index(fields=["status", "created_at"]),
            # the dashboards read today's messages live (apps.dashboards.selectors), rollups a day at a time
            models.Index(fields=["created_at"], name="message_created_at"),
        ]

    def __str__(self) -> str:
        return f"{self.direction} {self.status}: {self.text[:40]}"

    @property
    def by_agent(self) -> bool:
        """An outbound reply a model wrote (it names its model); a person's reply in a handoff names
        none. Its agent and its sender may be deleted later; this stays."""
        return bool(self.model)

    @property
    def follows_up(self) -> bool:
        """A person's reply to a message the agent had answered already: not that message's answer."""
        return bool((self.control or {}).get(FOLLOW_UP_KEY))

"""Writes on conversations outside the inbound pipeline."""
from __future__ import annotations

from .models import Conversation


def conversation_open(*, channel, user, agent=None) -> Conversation:
    """Start an empty conversation (web chat opens one before its first message)."""
    return Conversation.objects.create(channel=channel, user=user, agent=agent)

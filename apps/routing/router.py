"""The pipeline's *route* step: which agent answers a message."""
from __future__ import annotations

from apps.conversations.errors import NoRoute


def route_message(msg, *, channel, user, conversation):
    """The conversation's agent if it has one (conversations stick), else the channel default."""
    agent = conversation.agent if conversation is not None and conversation.agent_id else None
    if agent is None:
        agent = channel.default_agent
    if agent is None or not agent.enabled:
        raise NoRoute()
    return agent

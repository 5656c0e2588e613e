"""Building the prompt of an agent run: the agent's system prompt, the earlier turns the speaker
may see (the client's own history on the OpenAI face), cut to the agent's window, then the message."""
from __future__ import annotations

from django.conf import settings

from apps.conversations.models import Direction, Message, Status
from apps.identities.permissions import user_can_use_agent

from .models import agent_by_id

CLIENT_HISTORY_ROLES = {"system", "developer", "user", "assistant"}


def build_prompt(message: Message) -> list[dict]:
    """System prompt + the conversation's recent messages (oldest first) + this message."""
    agent = message.agent
    window = min(agent.history_messages, settings.GATEWAY_HISTORY_MESSAGES)
    # Newest first. The OpenAI face brings the client's own history instead of the conversation's.
    earlier = client_history(message)
    if earlier is None:
        # Only the turns the speaker may see (a platform thread is shared: history_for_speaker).
        earlier = history_for_speaker(
            Message.objects.filter(conversation_id=message.conversation_id, created_at__lt=message.created_at)
            .exclude(direction=Direction.INBOUND, status=Status.FAILED)
            .order_by("-created_at")
            .values_list("direction", "text", "agent_id", "model", "sender_id", "reply_to_id")[:window],
            message.sender,
        )
    earlier = earlier[:window]
    earlier = earlier[: trim_history_to_tokens([t["content"] for t in earlier], agent.history_tokens)]
    prompt = [{"role": "system", "content": agent.system_prompt}] if agent.system_prompt else []
    prompt.extend(reversed(earlier))
    prompt.append({"role": "user", "content": message.text})
    return prompt


def client_history(message) -> list[dict] | None:
    """The earlier turns of an OpenAI face request (put in ``control`` by the face), newest first;
    None when the conversation's stored messages are the history. A client's ``metadata`` never
    gets here. Client system turns become system messages *after* the agent's own system prompt."""
    control = getattr(message, "control", None)
    turns = control.get("client_history") if isinstance(control, dict) else None
    if not isinstance(turns, list):
        return None
    cleaned = [
        {"role": "system" if t["role"] == "developer" else t["role"], "content": t["content"]}
        for t in turns
        if isinstance(t, dict) and t.get("role") in CLIENT_HISTORY_ROLES and isinstance(t.get("content"), str)
    ]
    return list(reversed(cleaned))


def history_for_speaker(rows, sender) -> list[dict]:
    """Earlier turns (direction, text, agent id, model, sender id, reply-to id; newest first) the
    speaker may be shown.

    A platform thread is one conversation for everyone in it (a Slack channel thread, a WeCom
    group), so its history holds other people's turns. A turn that went to, or came from, an agent
    the speaker may not use is left out: an employee's exchange with an internal agent (and what
    its tools returned) never reaches the prompt of a customer's reply in the same thread. A turn
    whose agent was deleted since is left out too (its visibility is no longer known), unless it
    is the speaker's own: what they sent, and the answers to it. A person's reply (no agent, no
    model) is shown."""
    rows = list(rows)
    allowed: dict = {}
    # Answers whose agent is gone are the speaker's own when they answer the speaker (rare: asked
    # only when there are such rows).
    orphans = [reply_to for direction, _t, agent_id, model, _s, reply_to in rows
               if direction != Direction.INBOUND and agent_id is None and model and reply_to is not None]
    answers_to_speaker = set(Message.objects.filter(pk__in=orphans, sender_id=sender.pk).values_list(
        "pk", flat=True)) if orphans and sender is not None else set()

    def visible(direction, agent_id, model, sender_id, reply_to) -> bool:
        if sender is None:
            return True
        if agent_id is None:
            if direction == Direction.INBOUND:
                return sender_id == sender.pk  # every message is routed to an agent: that agent is gone
            return not model or reply_to in answers_to_speaker  # a person's reply, or an answer to the speaker
        if agent_id not in allowed:
            agent = agent_by_id(agent_id)
            allowed[agent_id] = agent is not None and user_can_use_agent(sender, agent)
        return allowed[agent_id]

    return [{"role": "user" if direction == Direction.INBOUND else "assistant", "content": text}
            for direction, text, agent_id, model, sender_id, reply_to in rows
            if visible(direction, agent_id, model, sender_id, reply_to)]


def trim_history_to_tokens(texts_newest_first: list[str], budget: int) -> int:
    """How many of the newest earlier messages fit in ``budget`` tokens (0 budget: all).

    Tokens are estimated (about four characters per token, plus a few per message): the window
    is a cost/context guard, not an exact count.
    """
    if budget <= 0:
        return len(texts_newest_first)
    used = 0
    for kept, text in enumerate(texts_newest_first):
        used += len(text) // 4 + 4
        if used > budget:
            return kept
    return len(texts_newest_first)

"""Built-in tools: one for customers, two for employees, two operational ones for admins."""
from __future__ import annotations

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from django.db.models import Count, Q, Sum
from django.utils import timezone as dj_timezone

from apps.conversations.models import Message
from apps.identities.channel_scope import sees_every_channel
from apps.identities.permissions import usable_channel_ids
from apps.identities.services import user_block
from apps.logs.models import LLMCall

from . import ToolContext, ToolFailed, register_tool


@register_tool(
    "current_time", visibility="public",
    description="The current date and time in a time zone (IANA name such as Europe/Paris).",
    parameters={
        "type": "object",
        "properties": {"timezone": {"type": "string", "maxLength": 64, "description": "IANA time zone"}},
        "additionalProperties": False,
    },
)
def current_time(ctx: ToolContext, *, timezone: str = "UTC") -> dict:
    if timezone not in available_timezones() and timezone != "UTC":
        raise ToolFailed(f"Unknown time zone {timezone!r}.")
    try:
        now = datetime.now(ZoneInfo(timezone))
    except ZoneInfoNotFoundError:
        raise ToolFailed(f"Unknown time zone {timezone!r}.") from None
    return {"timezone": timezone, "now": now.isoformat(timespec="seconds"), "weekday": now.strftime("%A")}


@register_tool(
    "search_conversations", visibility="internal",
    description="Find recent conversation messages containing a text (for support staff).",
    parameters={
        "type": "object",
        "properties": {
            "query": {"type": "string", "minLength": 2, "maxLength": 200},
            "limit": {"type": "integer", "minimum": 1, "maximum": 20},
        },
        "required": ["query"],
        "additionalProperties": False,
    },
)
def search_conversations(ctx: ToolContext, *, query: str, limit: int = 5) -> list[dict]:
    rows = Message.objects.filter(text__icontains=query)
    if not sees_every_channel(ctx.user):  # what was said on channels the speaker may use, as staff see it
        rows = rows.filter(channel_id__in=usable_channel_ids(ctx.user))
    rows = rows.select_related("conversation__user", "channel").order_by("-created_at")[:limit]
    return [
        {"conversation_id": str(m.conversation_id), "channel": m.channel.slug,
         "user": m.conversation.user.username, "direction": m.direction, "text": m.text[:200],
         "at": m.created_at.isoformat(timespec="seconds")}
        for m in rows
    ]


@register_tool(
    "customer_lookup", visibility="internal",
    description="A customer's account: roles, whether active, conversations and last activity.",
    parameters={
        "type": "object",
        "properties": {"username": {"type": "string", "minLength": 1, "maxLength": 150}},
        "required": ["username"],
        "additionalProperties": False,
    },
)
def customer_lookup(ctx: ToolContext, *, username: str) -> dict:
    from django.contrib.auth import get_user_model

    user = (
        get_user_model().objects.filter(username=username)
        .annotate(conversation_count=Count("conversations"))
        .first()
    )
    if user is None:
        raise ToolFailed(f"No user named {username!r}.")
    last = user.conversations.order_by("-last_message_at").values_list("last_message_at", flat=True).first()
    return {
        "username": user.username, "active": user.is_active,
        "roles": sorted(g.name for g in user.groups.all()),
        "conversations": user.conversation_count,
        "last_message_at": last.isoformat(timespec="seconds") if last else None,
    }


@register_tool(
    "usage_report", visibility="admin",
    description="Model usage over the last N days per agent and model: calls, errors, tokens, cost.",
    parameters={
        "type": "object",
        "properties": {"days": {"type": "integer", "minimum": 1, "maximum": 90}},
        "additionalProperties": False,
    },
)
def usage_report(ctx: ToolContext, *, days: int = 7) -> dict:
    since = dj_timezone.now() - timedelta(days=days)
    rows = (
        LLMCall.objects.filter(created_at__gte=since)
        .values("agent__slug", "model")
        .annotate(calls=Count("id"), errors=Count("id", filter=Q(status="error")),
                  tokens=Sum("total_tokens"), cost=Sum("cost"))
        .order_by("agent__slug", "model")
    )
    return {"days": days, "rows": [
        {"agent": r["agent__slug"], "model": r["model"], "calls": r["calls"], "errors": r["errors"],
         "tokens": r["tokens"] or 0, "cost": str(r["cost"] or 0)}
        for r in rows
    ]}


@register_tool(
    "block_user", visibility="admin",
    description="Block a user account (it can no longer send messages). Admin accounts cannot be blocked.",
    parameters={
        "type": "object",
        "properties": {
            "username": {"type": "string", "minLength": 1, "maxLength": 150},
            "reason": {"type": "string", "minLength": 3, "maxLength": 500},
        },
        "required": ["username", "reason"],
        "additionalProperties": False,
    },
)
def block_user(ctx: ToolContext, *, username: str, reason: str) -> dict:
    from django.contrib.auth import get_user_model

    user = get_user_model().objects.filter(username=username).first()
    if user is None:
        raise ToolFailed(f"No user named {username!r}.")
    if user.is_superuser or user.is_staff or user.pk == ctx.user.pk:
        raise ToolFailed("Staff accounts (and your own) cannot be blocked by a tool.")
    if user.blocked_at is None:
        user_block(user=user, actor=ctx.user, reason=reason)  # audited as user.blocked
    return {"username": user.username, "blocked": True}

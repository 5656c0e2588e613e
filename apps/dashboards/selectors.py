"""Reads for the dashboards. Charts and cost tables read the daily rollups (a few rows per day),
never the raw log tables; only the "latest N" lists and one conversation read raw rows, through
indexes (created_at, (status, created_at), (conversation, created_at))."""
from __future__ import annotations

import json
import uuid
from collections import defaultdict
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal

from django.db.models import Count, Exists, OuterRef, Q, Sum
from django.db.models.functions import Left, Length
from django.utils import timezone

from apps.agents.models import ToolCall
from apps.connectors.models import Channel
from apps.conversations.models import Conversation, Direction, Message
from apps.logs.models import (
    AuditEvent,
    DailyCallStats,
    DailyMessageStats,
    DailyRequestStats,
    DailySpenderStats,
    LLMCall,
    RequestLog,
    RollupMark,
)
from apps.logs.rollups import LATENCY_BUCKETS_MS, day_bounds, message_stats, percentile_ms

LATEST_ROWS = 100
TRANSCRIPT_ROWS = 1000  # messages shown on one conversation's page
CALL_ROWS = 1000  # model calls on one conversation's page (tool calls: up to 4 per call)
SUMMARY_CHARS = 200  # of a tool call's arguments and result
AUDIT_NEAR = timedelta(minutes=1)
TOP_SPENDERS = 20
GROUP_ROWS = 500


@dataclass
class Period:
    start: date  # inclusive
    end: date  # inclusive

    @property
    def days(self) -> list[date]:
        return [self.start + timedelta(days=n) for n in range((self.end - self.start).days + 1)]

    @property
    def bounds(self):
        return day_bounds(self.start)[0], day_bounds(self.end)[1]


@dataclass(frozen=True)
class Filters:
    """The filters a staff member sets once and every page applies where its data has the column
    (``applied`` lists them; the rest are kept for the other pages and shown as not applied)."""

    channel: str = ""
    agent: str = ""
    model: str = ""
    user: str = ""
    status: str = ""

    def set(self) -> dict[str, str]:
        return {k: v for k, v in self.__dict__.items() if v}


def _apply(rows, filters: Filters, lookups: dict[str, str]):
    """``rows`` narrowed by each set filter that ``lookups`` (filter name → ORM lookup) maps."""
    return rows.filter(**{lookups[k]: v for k, v in filters.set().items() if k in lookups})


@dataclass
class Table:
    """A titled table; every one can be exported as CSV (``?export=<name>``)."""

    name: str
    title: str
    columns: list[tuple[str, str]]  # (key, heading)
    rows: list[dict] = field(default_factory=list)
    link_column: str | None = None  # key whose cell links to row["url"]

    @property
    def body(self) -> list[dict]:
        """Rows as cell lists in column order (what the template loops over)."""
        return [{"url": row.get("url"), "cells": [(key == self.link_column, _display(row.get(key)))
                                                  for key, _ in self.columns]} for row in self.rows]


def _display(value):
    if value is None:
        return ""
    if isinstance(value, datetime):
        return timezone.localtime(value).strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, Decimal):
        return f"{value:.6f}".rstrip("0").rstrip(".") if value else "0"
    if isinstance(value, dict | list):
        return json.dumps(value, default=str)
    return value


@dataclass
class Chart:
    name: str
    title: str
    kind: str  # "line" | "bar"
    labels: list[str]
    datasets: list[dict]  # {"label", "data"}
    stacked: bool = False

    def config(self) -> dict:
        return {"name": self.name, "title": self.title, "kind": self.kind, "labels": self.labels,
                "datasets": self.datasets, "stacked": self.stacked}


def live_day(period: Period) -> date | None:
    """Today, if the period covers it: the overview adds today's raw rows created since its last
    rollup (RollupMark), so a message sent seconds ago is counted; other days read the rollups."""
    today = timezone.localdate()
    return today if period.start <= today <= period.end else None


@dataclass(frozen=True)
class Visible:
    """The channels and agents a staff member may use, by id (None: every one, a superuser). The
    pages count and cost everything, but name only these; the rest are summed under HIDDEN_ROWS."""

    channels: frozenset | None = None
    agents: frozenset | None = None


HIDDEN_ROWS = "(those you may not use)"
HIDDEN_ONE = "(one you may not use)"  # a row's agent she may not use, on a channel she may (as the admin's)


def _agent_label(slug: str | None, agent_id: int | None, agent_ids) -> str:
    """A row's agent: its slug, none, or HIDDEN_ONE when ``agent_ids`` (None: every one) lacks it."""
    if agent_id is None:
        return ""
    return slug if agent_ids is None or agent_id in agent_ids else HIDDEN_ONE


def _channel_names(visible: Visible = Visible()) -> dict:
    names = dict(Channel.objects.values_list("id", "slug"))
    if visible.channels is None:
        return names
    return {pk: slug if pk in visible.channels else HIDDEN_ROWS for pk, slug in names.items()}


def _fold_hidden(rows: list[dict], id_key: str, ids: frozenset | None, label_keys: list[str]) -> list[dict]:
    """Cost rows of the channels or agents not in ``ids`` summed into one row naming none of them,
    the table still sorted by cost; ``id_key`` is dropped from every row."""
    if ids is None:
        return rows
    shown: list[dict] = []
    hidden: dict | None = None
    for row in rows:
        row_id = row.pop(id_key)
        if row_id is None or row_id in ids:
            shown.append(row)
            continue
        if hidden is None:
            hidden = {**dict.fromkeys(label_keys, ""), label_keys[0]: HIDDEN_ROWS,
                      **{key: 0 for key, _ in _COST_COLUMNS}}
        for key, _ in _COST_COLUMNS:
            hidden[key] += row[key] or 0
    if hidden is not None:
        shown.append(hidden)
    return sorted(shown, key=lambda row: row["cost"] or 0, reverse=True)[:GROUP_ROWS]


def _series(per_day: dict, days: list[date]) -> list:
    return [per_day.get(day, 0) for day in days]


# --- overview --------------------------------------------------------------------------------


def overview(period: Period, filters: Filters = Filters(), visible: Visible = Visible()) -> dict:
    """Rollup rows for every day; for today, its rollup (rows before its RollupMark) plus the raw
    rows since then (or since midnight if today has no rollup yet). Only the channel filter applies:
    the message rollups are per channel only."""
    days = period.days
    labels = [d.isoformat() for d in days]
    names = _channel_names(visible)
    live = live_day(period)
    day_start, day_end = day_bounds(live) if live else (None, None)
    covered = RollupMark.objects.filter(day=live).values_list("covered_until", flat=True).first() if live else None
    since = covered or day_start
    by_channel = {"channel": "channel__slug"}
    in_period = {"day__gte": period.start, "day__lte": period.end}
    # Without a mark, today's rollup rows (if any) predate marks and are not used.
    not_rolled = [] if covered else [live]
    msg_rows = list(_apply(DailyMessageStats.objects.filter(**in_period), filters, by_channel)
                    .exclude(day__in=not_rolled).values("day", "channel_id", "inbound", "replies", "failures",
                                                        "active_users", "latency_buckets"))
    if live:
        msg_rows += [{"day": live, "channel_id": channel_id, **stats} for channel_id, stats in message_stats(
            since, day_end, day_start=day_start if covered else None, channel=filters.channel).items()]
    inbound_by_channel: dict = defaultdict(dict)
    per_day: dict = defaultdict(lambda: {"inbound": 0, "replies": 0, "failures": 0, "active_users": 0,
                                          "buckets": [0] * (len(LATENCY_BUCKETS_MS) + 1)})
    all_buckets = [0] * (len(LATENCY_BUCKETS_MS) + 1)
    for row in msg_rows:
        channel = names.get(row["channel_id"], "(deleted)")
        inbound_by_channel[channel][row["day"]] = inbound_by_channel[channel].get(row["day"], 0) + row["inbound"]
        totals = per_day[row["day"]]
        for key in ("inbound", "replies", "failures", "active_users"):
            totals[key] += row[key]
        for i, count in enumerate(row["latency_buckets"] or []):
            totals["buckets"][i] += count
            all_buckets[i] += count

    calls: dict = defaultdict(lambda: {"tokens": 0, "cost": Decimal(0), "calls": 0, "failed": 0})
    call_rows = list(_apply(DailyCallStats.objects.filter(**in_period), filters, by_channel)
                     .exclude(day__in=not_rolled).order_by().values("day")
                     .annotate(tokens=Sum("total_tokens"), cost=Sum("cost"), calls=Sum("calls"),
                               failed=Sum("failed_calls")))
    rejections: dict = defaultdict(lambda: defaultdict(int))
    request_rows = list(_apply(DailyRequestStats.objects.filter(**in_period), filters, by_channel)
                        .exclude(day__in=not_rolled).exclude(rejection="").order_by().values("day", "rejection")
                        .annotate(n=Sum("requests")))
    if live:
        raw_calls = _apply(LLMCall.objects.filter(created_at__gte=since, created_at__lt=day_end), filters, by_channel)
        call_rows.append({"day": live, **raw_calls.aggregate(
            tokens=Sum("total_tokens"), cost=Sum("cost"), calls=Count("id"),
            failed=Count("id", filter=Q(status=LLMCall.Status.ERROR)))})
        raw_requests = _apply(RequestLog.objects.filter(created_at__gte=since, created_at__lt=day_end,
                                                        rejection__gt=""), filters, by_channel)
        request_rows += [{"day": live, **row} for row in
                         raw_requests.order_by().values("rejection").annotate(n=Count("id"))]
    for row in call_rows:
        for key in ("tokens", "cost", "calls", "failed"):
            calls[row["day"]][key] += row[key] or 0
    for row in request_rows:
        rejections[row["rejection"]][row["day"]] += row["n"]

    charts = [
        Chart("messages", "Messages per channel", "line", labels,
              [{"label": ch, "data": _series(series, days)} for ch, series in sorted(inbound_by_channel.items())]),
        Chart("replies", "Replies and failures", "bar", labels, [
            {"label": "replies", "data": [per_day[d]["replies"] if d in per_day else 0 for d in days]},
            {"label": "failures", "data": [per_day[d]["failures"] if d in per_day else 0 for d in days]},
        ]),
        Chart("users", "Active users (per channel, summed)", "line", labels,
              [{"label": "active users", "data": [per_day[d]["active_users"] if d in per_day else 0 for d in days]}]),
        Chart("latency", "Reply latency (ms)", "line", labels, [
            {"label": "p50", "data": [percentile_ms(per_day[d]["buckets"], 0.5) if d in per_day else None
                                      for d in days]},
            {"label": "p95", "data": [percentile_ms(per_day[d]["buckets"], 0.95) if d in per_day else None
                                      for d in days]},
        ]),
        Chart("tokens", "Tokens per day", "bar", labels,
              [{"label": "tokens", "data": [int(calls[d]["tokens"] or 0) if d in calls else 0 for d in days]}]),
        Chart("cost", "Cost per day", "bar", labels,
              [{"label": "cost", "data": [float(calls[d]["cost"] or 0) if d in calls else 0 for d in days]}]),
        Chart("rejections", "Refused requests by reason", "bar", labels,
              [{"label": reason, "data": _series(series, days)} for reason, series in sorted(rejections.items())],
              stacked=True),
    ]
    daily = Table("daily", "Per day", [
        ("day", "Day"), ("inbound", "Messages"), ("replies", "Replies"), ("failures", "Failures"),
        ("active_users", "Active users"), ("p50_ms", "p50 ms"), ("p95_ms", "p95 ms"), ("calls", "Model calls"),
        ("tokens", "Tokens"), ("cost", "Cost"), ("rate_limited", "Rate-limited"), ("quota", "Quota refusals"),
    ])
    for d in days:
        totals = per_day.get(d)
        call = calls.get(d, {})
        daily.rows.append({
            "day": d.isoformat(),
            "inbound": totals["inbound"] if totals else 0,
            "replies": totals["replies"] if totals else 0,
            "failures": totals["failures"] if totals else 0,
            "active_users": totals["active_users"] if totals else 0,
            "p50_ms": percentile_ms(totals["buckets"], 0.5) if totals else None,
            "p95_ms": percentile_ms(totals["buckets"], 0.95) if totals else None,
            "calls": int(call.get("calls") or 0),
            "tokens": int(call.get("tokens") or 0),
            "cost": call.get("cost") or Decimal(0),
            "rate_limited": sum(s.get(d, 0) for reason, s in rejections.items() if "rate" in reason),
            "quota": sum(s.get(d, 0) for reason, s in rejections.items() if "quota" in reason),
        })
    summary = {
        "messages": sum(r["inbound"] for r in daily.rows),
        "replies": sum(r["replies"] for r in daily.rows),
        "failures": sum(r["failures"] for r in daily.rows),
        "tokens": sum(r["tokens"] for r in daily.rows),
        "cost": sum((r["cost"] for r in daily.rows), Decimal(0)),
        "p50_ms": percentile_ms(all_buckets, 0.5),
        "p95_ms": percentile_ms(all_buckets, 0.95),
        "rejections": sum(sum(s.values()) for s in rejections.values()),
    }
    return {"charts": charts, "tables": [daily], "summary": summary, "applied": {"channel"}}


# --- cost ------------------------------------------------------------------------------------

_COST_COLUMNS = [("calls", "Calls"), ("failed_calls", "Failed"), ("prompt_tokens", "Prompt tokens"),
                 ("completion_tokens", "Completion tokens"), ("total_tokens", "Tokens"), ("cost", "Cost")]
_COST_SUMS = {key: Sum(key) for key, _ in _COST_COLUMNS}


# The cost rollups keep model calls per (channel, agent, model) and, apart, per (user, API key).
COST_CALL_FILTERS = {"channel": "channel__slug", "agent": "agent__slug", "model": "model"}
COST_SPENDER_FILTERS = {"user": "user__username__icontains"}


def cost(period: Period, filters: Filters = Filters(), visible: Visible = Visible()) -> dict:
    rollups = _apply(DailyCallStats.objects.filter(day__gte=period.start, day__lte=period.end).order_by(),
                     filters, COST_CALL_FILTERS)
    spender_rollups = _apply(DailySpenderStats.objects.filter(day__gte=period.start, day__lte=period.end)
                             .order_by(), filters, COST_SPENDER_FILTERS)
    groups = [
        ("model", "By model", rollups, ["model", "provider"], [("model", "Model"), ("provider", "Provider")]),
        ("agent", "By agent", rollups, ["agent__slug"], [("agent__slug", "Agent")]),
        ("user", "By user", spender_rollups, ["user__username"], [("user__username", "User")]),
        ("channel", "By channel", rollups, ["channel__slug", "channel__kind"],
         [("channel__slug", "Channel"), ("channel__kind", "Kind")]),
        ("api_key", "By API key", spender_rollups, ["api_key__prefix", "api_key__name", "api_key__user__username"],
         [("api_key__prefix", "Key prefix"), ("api_key__name", "Key name"), ("api_key__user__username", "Owner")]),
    ]
    scoped = {"agent": ("agent_id", visible.agents), "channel": ("channel_id", visible.channels)}
    tables = []
    for name, title, source, fields, columns in groups:
        id_key, ids = scoped.get(name, ("", None))
        if ids is None:
            rows = list(source.values(*fields).annotate(**_COST_SUMS).order_by("-cost")[:GROUP_ROWS])
        else:  # every row (one per channel or agent), the hidden ones folded into one
            rows = _fold_hidden(list(source.values(id_key, *fields).annotate(**_COST_SUMS)), id_key, ids, fields)
        tables.append(Table(name, title, columns + _COST_COLUMNS, rows))
    spenders = list(spender_rollups.filter(user__isnull=False).values("user__username").annotate(**_COST_SUMS)
                    .order_by("-cost")[:TOP_SPENDERS])
    tables.insert(0, Table("top_spenders", f"Top {TOP_SPENDERS} spenders", [("user__username", "User")]
                           + _COST_COLUMNS, spenders))
    labels = [d.isoformat() for d in period.days]
    per_model: dict = defaultdict(dict)
    for row in rollups.values("day", "model").annotate(cost=Sum("cost")):
        per_model[row["model"]][row["day"]] = float(row["cost"] or 0)
    chart = Chart("cost_by_model", "Cost per day by model", "bar", labels,
                  [{"label": m, "data": _series(s, period.days)} for m, s in sorted(per_model.items())],
                  stacked=True)
    total = rollups.aggregate(cost=Sum("cost"), tokens=Sum("total_tokens"), calls=Sum("calls"))
    return {"charts": [chart], "tables": tables,
            "summary": {"cost": total["cost"] or Decimal(0), "tokens": total["tokens"] or 0,
                        "calls": total["calls"] or 0},
            "applied": {"channel", "agent", "model", "user"}}


def _audit_table(start, end, action: str) -> Table:
    audit_rows = AuditEvent.objects.filter(created_at__gte=start, created_at__lt=end)
    if action:
        audit_rows = audit_rows.filter(action=action)
    return Table("audit", "Audit log (latest)", [
        ("created_at", "Time"), ("action", "Action"), ("actor__username", "Actor"), ("target_type", "Target type"),
        ("target_id", "Target"), ("before", "Before"), ("after", "After"), ("detail", "Detail"),
        ("client_ip", "Client IP"),
    ], rows=list(audit_rows.order_by("-created_at").values(
        "created_at", "action", "actor__username", "target_type", "target_id", "before", "after", "detail",
        "client_ip")[:LATEST_ROWS]))


# --- conversations ---------------------------------------------------------------------------


def conversation_search(period: Period, *, user: str = "", channel: str = "", text: str = "", status: str = "",
                        agent: str = "", model: str = "", limit: int = 50, offset: int = 0,
                        channel_ids: set[int] | None = None, agent_ids: set[int] | None = None) -> Table:
    """``channel_ids``: only conversations of these channels (None: all); ``agent_ids``: the agents
    named (None: all), the others HIDDEN_ONE."""
    start, end = period.bounds
    found = (Conversation.objects.filter(last_message_at__gte=start, last_message_at__lt=end)
             .select_related("channel", "user", "agent").order_by("-last_message_at"))
    if channel_ids is not None:
        found = found.filter(channel_id__in=channel_ids)
    if user:
        found = found.filter(user__username__icontains=user)
    if channel:
        found = found.filter(channel__slug=channel)
    if text:
        found = found.filter(Exists(Message.objects.filter(conversation=OuterRef("pk"), text__icontains=text)))
    if agent:
        found = found.filter(agent__slug=agent)
    if model:
        found = found.filter(Exists(LLMCall.objects.filter(conversation=OuterRef("pk"), model=model)))
    if status:
        found = found.filter(Exists(Message.objects.filter(conversation=OuterRef("pk"), direction=Direction.INBOUND,
                                                           status=status)))
    page = list(found[offset:offset + limit])
    counts = dict(Message.objects.filter(conversation__in=[c.id for c in page]).order_by().values("conversation_id")
                  .annotate(n=Count("id")).values_list("conversation_id", "n"))
    table = Table("conversations", "Conversations", [
        ("id", "Conversation"), ("last_message_at", "Last message"), ("channel", "Channel"), ("user", "User"),
        ("agent", "Agent"), ("message_count", "Messages"),
    ], link_column="id")
    for c in page:
        table.rows.append({
            "id": str(c.id), "url": f"/dashboard/conversations/{c.id}/",
            "last_message_at": c.last_message_at, "channel": c.channel.slug, "user": c.user.username,
            "agent": _agent_label(c.agent.slug if c.agent else None, c.agent_id, agent_ids),
            "message_count": counts.get(c.id, 0),
        })
    return table


def conversation_detail(conversation_id, *, channel_ids: set[int] | None = None,
                        audit_log: bool = True, agent_ids: set[int] | None = None) -> dict | None:
    """The transcript, each model call with the tools it ran and the audit events near it, and
    the conversation's audit trail: a fixed number of queries whatever the conversation's size
    (messages, calls, tool calls and audit events are each one bounded query). None when there is
    no such conversation, or its channel is not among ``channel_ids`` (None: any).

    The audit events are those about the conversation and its messages; with ``audit_log`` (the
    viewer may read the audit log) also its user's own in its time, but none about a conversation
    or message of a channel outside ``channel_ids``."""
    conversation = (Conversation.objects.select_related("channel", "user", "agent")
                    .filter(pk=conversation_id).first())
    if conversation is None or (channel_ids is not None and conversation.channel_id not in channel_ids):
        return None
    usage = {
        row["message_id"]: row for row in
        LLMCall.objects.filter(conversation=conversation).order_by().values("message_id")
        .annotate(cost=Sum("cost"), calls=Count("id"), failed=Count("id", filter=Q(status="error")))
    }
    messages = Table("messages", "Messages", [
        ("created_at", "Time"), ("direction", "Who"), ("text", "Message"), ("status", "Status"), ("model", "Model"),
        ("prompt_tokens", "Prompt"), ("completion_tokens", "Completion"), ("total_tokens", "Tokens"),
        ("cost", "Cost"), ("latency_ms", "Latency ms"), ("request_id", "Request id"),
    ])
    for m in conversation.messages.order_by("created_at")[:TRANSCRIPT_ROWS]:
        row = {
            "id": str(m.id), "created_at": m.created_at, "text": m.text, "status": m.status,
            "direction": "user" if m.direction == Direction.INBOUND else ("agent" if m.by_agent else "staff"),
            "model": m.model, "prompt_tokens": m.prompt_tokens, "completion_tokens": m.completion_tokens,
            "total_tokens": m.total_tokens, "latency_ms": m.latency_ms, "request_id": m.request_id, "cost": None,
        }
        if m.direction == Direction.OUTBOUND and m.by_agent and m.reply_to_id in usage:  # a person's costs none
            row["cost"] = usage[m.reply_to_id]["cost"]
        if m.direction == Direction.INBOUND and m.error_code:
            row["status"] = f"{m.status} ({m.error_code})"
        messages.rows.append(row)
    first, last = conversation.created_at, conversation.last_message_at or timezone.now()
    message_ids = [row["id"] for row in messages.rows]
    about_it = (Q(target_type="conversations.conversation", target_id=str(conversation.pk))
                | Q(target_type="conversations.message", target_id__in=message_ids))
    if audit_log:
        about_it |= Q(actor_id=conversation.user_id, created_at__gte=first - timedelta(minutes=1),
                      created_at__lte=last + timedelta(minutes=1))
    audit_rows = list(AuditEvent.objects.filter(about_it).order_by("created_at").values(
        "created_at", "action", "actor__username", "target_type", "target_id", "detail")[:LATEST_ROWS])
    if audit_log and channel_ids is not None:  # the rest are about this conversation, on a shown channel
        audit_rows = _about_channels(audit_rows, channel_ids)
    audit_events = Table("audit", "Audit events around it", [
        ("created_at", "Time"), ("action", "Action"), ("actor__username", "Actor"), ("target_type", "Target type"),
        ("target_id", "Target"), ("detail", "Detail"),
    ], rows=audit_rows)
    calls = _calls_with_tools(conversation, audit_events.rows)
    agent = _agent_label(conversation.agent.slug if conversation.agent else None, conversation.agent_id, agent_ids)
    return {"conversation": conversation, "agent": agent, "tables": [messages, calls, audit_events]}


TRANSCRIPT_TARGETS = {"conversations.conversation": Conversation, "conversations.message": Message}


def _about_channels(audit_rows: list[dict], channel_ids: set[int]) -> list[dict]:
    """``audit_rows`` but those about a conversation or message that is not on one of the channels
    ``channel_ids`` (or no longer exists): one query per kind of target they name."""
    shown = set()
    for target_type, model in TRANSCRIPT_TARGETS.items():
        named = set()
        for row in audit_rows:
            if row["target_type"] == target_type:
                with suppress(ValueError):
                    named.add(uuid.UUID(row["target_id"]))
        if named:
            shown |= {(target_type, str(pk)) for pk in model.objects.filter(
                pk__in=named, channel_id__in=channel_ids).values_list("pk", flat=True)}
    return [row for row in audit_rows
            if row["target_type"] not in TRANSCRIPT_TARGETS or (row["target_type"], row["target_id"]) in shown]


def _calls_with_tools(conversation, audit_rows: list[dict]) -> Table:
    """The conversation's model calls in order; each row carries ``tool_calls`` (the tools that
    call asked for, run before the next call) and ``audit`` (events from its start until the
    next call starts, or AUDIT_NEAR after it ended). Tools and audit events are matched to calls
    in Python, from one query each."""
    calls = Table("calls", "Model calls", [
        ("created_at", "Time"), ("model", "Model"), ("provider", "Provider"), ("attempt", "Attempt"),
        ("status", "Status"), ("prompt_tokens", "Prompt"), ("completion_tokens", "Completion"),
        ("total_tokens", "Tokens"), ("cost", "Cost"), ("latency_ms", "Latency ms"), ("ttft_ms", "TTFT ms"),
        ("tools", "Tools run"), ("error", "Error"),
    ], rows=list(LLMCall.objects.filter(conversation=conversation).order_by("created_at").values(
        "id", "message_id", "created_at", "model", "provider", "attempt", "status", "prompt_tokens",
        "completion_tokens", "total_tokens", "cost", "latency_ms", "ttft_ms", "error")[:CALL_ROWS]))
    tool_rows = list(
        ToolCall.objects.filter(message__conversation=conversation).order_by("created_at")
        .annotate(args_head=Left("arguments", SUMMARY_CHARS), args_len=Length("arguments"),
                  result_head=Left("result", SUMMARY_CHARS), result_len=Length("result"))
        .values("message_id", "name", "step", "status", "latency_ms", "created_at", "args_head", "args_len",
                "result_head", "result_len")[:CALL_ROWS * 4]
    )
    by_message: dict = defaultdict(list)
    for row in calls.rows:
        # A model call's row is written when the call ends; the tools it asked for run after that.
        row["started_at"] = row["created_at"] - timedelta(milliseconds=row["latency_ms"] or 0)
        row["tool_calls"], row["audit"] = [], []
        by_message[row["message_id"]].append(row)
    for tool in tool_rows:
        ran_by = _last_at_or_before(by_message.get(tool["message_id"], []), tool["created_at"], "created_at")
        if ran_by is None:
            continue
        ran_by["tool_calls"].append({
            "name": tool["name"], "step": tool["step"], "status": tool["status"], "latency_ms": tool["latency_ms"],
            "arguments": _summary(tool["args_head"], tool["args_len"]),
            "result": _summary(tool["result_head"], tool["result_len"]),
        })
    for index, row in enumerate(calls.rows):
        following = calls.rows[index + 1]["started_at"] if index + 1 < len(calls.rows) else None
        until = following or row["created_at"] + AUDIT_NEAR
        row["audit"] = [event for event in audit_rows if row["started_at"] <= event["created_at"] < until]
        row["tools"] = ", ".join(f"{t['name']} ({t['status']})" for t in row["tool_calls"])
    return calls


def _last_at_or_before(rows: list[dict], moment, key: str) -> dict | None:
    found = None
    for row in rows:  # in time order
        if row[key] <= moment:
            found = row
    return found or (rows[0] if rows else None)


def _summary(head: str, length: int) -> str:
    return head + "…" if length > len(head) else head


# --- errors and security ---------------------------------------------------------------------


ERROR_CALL_FILTERS = {"channel": "channel__slug", "agent": "agent__slug", "model": "model",
                      "user": "user__username__icontains"}
ERROR_REQUEST_FILTERS = {"channel": "channel__slug", "user": "user__username__icontains"}


def errors_and_security(period: Period, *, action: str = "", filters: Filters = Filters(),
                        channel_ids: set[int] | None = None, audit_log: bool = True,
                        agent_ids: set[int] | None = None) -> dict:
    """``channel_ids``: failed model calls and refused requests of these channels only (None: all),
    as the admin lists them; ``agent_ids``: the agents they name (None: all), the others
    HIDDEN_ONE. ``audit_log``: include the audit log (the viewer may read it)."""
    start, end = period.bounds
    failed_calls = LLMCall.objects.filter(status=LLMCall.Status.ERROR, created_at__gte=start, created_at__lt=end)
    if channel_ids is not None:
        failed_calls = failed_calls.filter(channel_id__in=channel_ids)
    failed = Table("failed_calls", "Failed model calls (latest)", [
        ("created_at", "Time"), ("model", "Model"), ("provider", "Provider"), ("attempt", "Attempt"),
        ("error", "Error"), ("agent__slug", "Agent"), ("channel__slug", "Channel"), ("user__username", "User"),
        ("conversation_id", "Conversation"),
    ], rows=list(_apply(failed_calls, filters, ERROR_CALL_FILTERS)
                 .order_by("-created_at").values("created_at", "model", "provider", "attempt", "error",
                                                 "agent_id", "agent__slug", "channel__slug", "user__username",
                                                 "conversation_id")[:LATEST_ROWS]))
    for row in failed.rows:
        row["agent__slug"] = _agent_label(row["agent__slug"], row.pop("agent_id"), agent_ids)
    refused_requests = RequestLog.objects.filter(created_at__gte=start, created_at__lt=end, rejection__gt="")
    if channel_ids is not None:
        refused_requests = refused_requests.filter(RequestLog.on_channels(channel_ids))
    by_reason = Table("refusals_by_reason", "Refused requests by reason", [
        ("rejection", "Reason"), ("channel_kind", "Channel kind"), ("status_code", "Status"), ("requests", "Requests"),
    ], rows=list(_apply(DailyRequestStats.objects.filter(day__gte=period.start, day__lte=period.end),
                        filters, {"channel": "channel__slug"}).exclude(rejection="")
                 .order_by().values("rejection", "channel_kind", "status_code").annotate(requests=Sum("requests"))
                 .order_by("-requests")))
    refused = Table("refused_requests", "Refused requests (latest)", [
        ("created_at", "Time"), ("rejection", "Reason"), ("status_code", "Status"), ("channel_kind", "Kind"),
        ("channel__slug", "Channel"), ("user__username", "User"), ("client_ip", "Client IP"),
        ("request_id", "Request id"),
    ], rows=list(_apply(refused_requests, filters, ERROR_REQUEST_FILTERS)
                 .order_by("-created_at").values("created_at", "rejection", "status_code", "channel_kind",
                                                 "channel__slug", "user__username", "client_ip",
                                                 "request_id")[:LATEST_ROWS]))
    labels = [d.isoformat() for d in period.days]
    per_reason: dict = defaultdict(dict)
    for row in (_apply(DailyRequestStats.objects.filter(day__gte=period.start, day__lte=period.end), filters,
                       {"channel": "channel__slug"}).exclude(rejection="")
                .order_by().values("day", "rejection").annotate(n=Sum("requests"))):
        per_reason[row["rejection"]][row["day"]] = row["n"]
    chart = Chart("refusals", "Refused requests per day", "bar", labels,
                  [{"label": r, "data": _series(s, period.days)} for r, s in sorted(per_reason.items())],
                  stacked=True)
    tables, actions = [failed, by_reason, refused], []
    if audit_log:
        tables.append(_audit_table(start, end, action))
        actions = sorted(AuditEvent.objects.order_by().values_list("action", flat=True).distinct()[:200])
    return {"charts": [chart], "tables": tables, "actions": actions, "audit_log": audit_log,
            "applied": {"channel", "agent", "model", "user"}}

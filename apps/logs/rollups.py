"""Daily rollups (what the dashboards chart) and retention of the raw log rows.

``rollup_days(days)`` rebuilds the rollup rows of each given day from the raw rows, in one
transaction per day: GROUP BY in the database, then replace the day's rows. Rebuilding (rather
than incrementing) makes it idempotent and immune to late-committed rows; the beat task rebuilds
the last GATEWAY_LOG_ROLLUP_DAYS days every GATEWAY_LOG_ROLLUP_SECONDS.
"""
from __future__ import annotations

import logging
from datetime import date, datetime, time, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Case, Count, Exists, IntegerField, OuterRef, Q, Sum, Value, When
from django.utils import timezone

from apps.conversations.models import PERSONS_REPLY, Direction, Message, Status

from .models import (
    AuditEvent,
    DailyCallStats,
    DailyMessageStats,
    DailyRequestStats,
    DailySpenderStats,
    LLMCall,
    RequestLog,
    RollupMark,
)

logger = logging.getLogger(__name__)

# Upper bounds (ms) of the reply-latency histogram kept per day; one extra slot counts the rest.
LATENCY_BUCKETS_MS = (100, 250, 500, 750, 1000, 1500, 2000, 3000, 5000, 7500, 10000, 15000, 20000, 30000, 60000,
                      120000)
PURGE_BATCH_ROWS = 10_000


def day_bounds(day: date) -> tuple[datetime, datetime]:
    start = timezone.make_aware(datetime.combine(day, time.min), timezone.get_default_timezone())
    return start, start + timedelta(days=1)


def recent_days(count: int | None = None) -> list[date]:
    today = timezone.localdate()
    return [today - timedelta(days=n) for n in range(count or settings.GATEWAY_LOG_ROLLUP_DAYS)]


def rollup_days(days: list[date], progress=None, *, lag_seconds: float = 0) -> None:
    """``progress(done, total, day)``, if given, is called after each day (management commands).
    The periodic rebuild passes GATEWAY_LOG_ROLLUP_LAG_SECONDS as ``lag_seconds``."""
    for done, day in enumerate(days, 1):
        rollup_day(day, lag_seconds=lag_seconds)
        if progress:
            progress(done, len(days), day)


@transaction.atomic
def rollup_day(day: date, *, lag_seconds: float = 0) -> None:
    """Replace the rollup rows of ``day`` with fresh aggregates of its raw rows created before
    ``lag_seconds`` ago (all of a past day), and record that bound (RollupMark)."""
    start, end = day_bounds(day)
    lagged = timezone.now() - timedelta(seconds=lag_seconds)
    until = max(start, min(end, lagged))
    _rollup_calls(day, start, until)
    _rollup_messages(day, start, until)
    _rollup_requests(day, start, until)
    RollupMark.objects.update_or_create(day=day, defaults={"covered_until": until})


_CALL_SUMS = {
    "calls": Count("id"), "failed_calls": Count("id", filter=Q(status=LLMCall.Status.ERROR)),
    "prompt_tokens": Sum("prompt_tokens"), "completion_tokens": Sum("completion_tokens"),
    "total_tokens": Sum("total_tokens"), "cost": Sum("cost"), "latency_ms_total": Sum("latency_ms"),
}


def _rollup_calls(day, start, end) -> None:
    in_day = LLMCall.objects.filter(created_at__gte=start, created_at__lt=end).order_by()
    DailyCallStats.objects.filter(day=day).delete()
    DailyCallStats.objects.bulk_create(
        [DailyCallStats(day=day, **g) for g in
         in_day.values("channel_id", "agent_id", "model", "provider").annotate(**_CALL_SUMS)],
        batch_size=2000,
    )
    DailySpenderStats.objects.filter(day=day).delete()
    DailySpenderStats.objects.bulk_create(
        [DailySpenderStats(day=day, **g) for g in in_day.values("user_id", "api_key_id").annotate(**_CALL_SUMS)],
        batch_size=2000,
    )


def _rollup_messages(day, start, end) -> None:
    per_channel = message_stats(start, end)
    DailyMessageStats.objects.filter(day=day).delete()
    DailyMessageStats.objects.bulk_create(
        [DailyMessageStats(day=day, channel_id=channel_id, **stats) for channel_id, stats in per_channel.items()]
    )


def message_stats(start, end, *, day_start: datetime | None = None, channel: str = "") -> dict:
    """channel id → {inbound, failures, active_users, replies, latency_buckets} of the messages
    created in [start, end): what a DailyMessageStats row holds (also read live for today).

    With ``day_start``, ``active_users`` counts only senders with no inbound message on that
    channel in [day_start, start): what to add to a rollup of [day_start, start). ``channel``
    (a slug) narrows it to one channel."""
    in_day = Message.objects.filter(created_at__gte=start, created_at__lt=end).order_by()
    if channel:
        in_day = in_day.filter(channel__slug=channel)
    per_channel: dict = {}
    new_sender = None
    if day_start is not None:
        new_sender = ~Exists(Message.objects.filter(
            sender_id=OuterRef("sender_id"), channel_id=OuterRef("channel_id"), direction=Direction.INBOUND,
            created_at__gte=day_start, created_at__lt=start))
    inbound = (
        in_day.filter(direction=Direction.INBOUND)
        .values("channel_id")
        .annotate(inbound=Count("id"), failures=Count("id", filter=Q(status=Status.FAILED)),
                  active_users=Count("sender_id", distinct=True, filter=new_sender))
    )
    for row in inbound:
        per_channel[row["channel_id"]] = {
            "inbound": row["inbound"], "failures": row["failures"], "active_users": row["active_users"],
            "replies": 0, "latency_buckets": [0] * (len(LATENCY_BUCKETS_MS) + 1),
        }
    bucket = Case(
        *[When(latency_ms__lte=bound, then=Value(i)) for i, bound in enumerate(LATENCY_BUCKETS_MS)],
        default=Value(len(LATENCY_BUCKETS_MS)), output_field=IntegerField(),
    )
    replies = (
        in_day.filter(direction=Direction.OUTBOUND, latency_ms__isnull=False).exclude(PERSONS_REPLY)  # agents' replies
        .annotate(bucket=bucket)
        .values("channel_id", "bucket")
        .annotate(n=Count("id"))
    )
    for row in replies:
        stats = per_channel.setdefault(row["channel_id"], {
            "inbound": 0, "failures": 0, "active_users": 0, "replies": 0,
            "latency_buckets": [0] * (len(LATENCY_BUCKETS_MS) + 1),
        })
        stats["replies"] += row["n"]
        stats["latency_buckets"][row["bucket"]] += row["n"]
    return per_channel


def _rollup_requests(day, start, end) -> None:
    groups = (
        RequestLog.objects.filter(created_at__gte=start, created_at__lt=end)
        .order_by()
        .values("channel_id", "channel_kind", "status_code", "rejection")
        .annotate(requests=Count("id"), latency_ms_total=Sum("latency_ms"))
    )
    DailyRequestStats.objects.filter(day=day).delete()
    DailyRequestStats.objects.bulk_create([DailyRequestStats(day=day, **g) for g in groups])


def percentile_ms(buckets: list[int], fraction: float) -> int | None:
    """The bucket bound under which ``fraction`` of the counted replies fall (None if none)."""
    total = sum(buckets)
    if not total:
        return None
    seen = 0
    for index, count in enumerate(buckets):
        seen += count
        if seen >= fraction * total:
            return LATENCY_BUCKETS_MS[index] if index < len(LATENCY_BUCKETS_MS) else LATENCY_BUCKETS_MS[-1] * 2
    return None


def purge_old_logs(*, now: datetime | None = None, progress=None) -> dict[str, int]:
    """Delete raw LLM-call and request rows past GATEWAY_LOG_RETENTION_DAYS and audit rows past
    GATEWAY_AUDIT_RETENTION_DAYS, in batches (short transactions, no long table locks).
    ``progress(table, deleted_so_far)``, if given, is called after each batch.
    Rollup rows are kept: the charts outlive the raw rows."""
    now = now or timezone.now()
    raw_cutoff = now - timedelta(days=settings.GATEWAY_LOG_RETENTION_DAYS)
    audit_cutoff = now - timedelta(days=settings.GATEWAY_AUDIT_RETENTION_DAYS)
    deleted = {
        "llm_calls": _delete_before(LLMCall, raw_cutoff, progress),
        "requests": _delete_before(RequestLog, raw_cutoff, progress),
        "audit_events": _delete_before(AuditEvent, audit_cutoff, progress),
    }
    logger.info("old log rows purged", extra={"deleted": deleted})
    return deleted


def _delete_before(model, cutoff: datetime, progress=None) -> int:
    total = 0
    while True:
        ids = list(model.objects.filter(created_at__lt=cutoff).order_by().values_list("id", flat=True)[
            :PURGE_BATCH_ROWS])
        if not ids:
            return total
        total += model.objects.filter(id__in=ids).delete()[0]
        if progress:
            progress(model._meta.db_table, total)

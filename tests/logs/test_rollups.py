"""Daily rollups rebuilt from raw rows, and retention of the raw rows."""
from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from apps.conversations.models import Conversation, Message
from apps.logs import tasks
from apps.logs.models import (
    AuditEvent,
    DailyCallStats,
    DailyMessageStats,
    DailyRequestStats,
    DailySpenderStats,
    LLMCall,
    RequestLog,
)
from apps.logs.rollups import LATENCY_BUCKETS_MS, percentile_ms, purge_old_logs, rollup_day


def call(agent, channel, user, *, status="ok", tokens=(10, 5), cost="0.01", latency=100, when=None, model="fake-gpt"):
    return LLMCall.objects.create(
        agent=agent, channel=channel, user=user, model=model, provider="fake", status=status,
        prompt_tokens=tokens[0], completion_tokens=tokens[1], total_tokens=sum(tokens), cost=Decimal(cost),
        latency_ms=latency, created_at=when or timezone.now(),
    )


@pytest.mark.django_db
class TestRollups:
    def test_calls_are_summed_per_day_and_dimensions(self, agent, api_channel, customer, employee):
        today = timezone.now()
        call(agent, api_channel, customer)
        call(agent, api_channel, customer, tokens=(20, 10), cost="0.02", latency=300)
        call(agent, api_channel, customer, status="error", tokens=(0, 0), cost="0")
        call(agent, api_channel, employee)
        call(agent, api_channel, customer, when=today - timedelta(days=1))
        rollup_day(timezone.localdate())
        row = DailySpenderStats.objects.get(user=customer)
        assert (row.calls, row.failed_calls, row.prompt_tokens, row.completion_tokens, row.total_tokens) == (
            3, 1, 30, 15, 45)
        assert row.cost == Decimal("0.03") and row.latency_ms_total == 500
        assert DailySpenderStats.objects.filter(day=timezone.localdate()).count() == 2
        assert DailyCallStats.objects.get(day=timezone.localdate()).calls == 4

    def test_rebuilding_a_day_is_idempotent(self, agent, api_channel, customer):
        call(agent, api_channel, customer)
        rollup_day(timezone.localdate())
        rollup_day(timezone.localdate())
        assert DailyCallStats.objects.get().calls == 1

    def test_messages_replies_failures_active_users_and_latency(self, agent, api_channel, customer, employee):
        conversation = Conversation.objects.create(channel=api_channel, user=customer, agent=agent)
        inbound = [
            Message.objects.create(conversation=conversation, channel=api_channel, direction="in",
                                   status=status, sender=sender, text="hi")
            for status, sender in (("answered", customer), ("answered", employee), ("failed", customer))
        ]
        for message, latency in zip(inbound[:2], (90, 1200), strict=True):
            Message.objects.create(conversation=conversation, channel=api_channel, direction="out",
                                   status="sent", reply_to=message, text="yo", latency_ms=latency, model="fake-gpt")
        rollup_day(timezone.localdate())
        row = DailyMessageStats.objects.get(channel=api_channel)
        assert (row.inbound, row.replies, row.failures, row.active_users) == (3, 2, 1, 2)
        assert sum(row.latency_buckets) == 2 and len(row.latency_buckets) == len(LATENCY_BUCKETS_MS) + 1
        assert percentile_ms(row.latency_buckets, 0.5) == 100
        assert percentile_ms(row.latency_buckets, 0.95) == 1500

    def test_requests_per_status_and_reason(self, api_channel, settings):
        settings.GATEWAY_LOG_ROLLUP_LAG_SECONDS = 60
        before = timezone.now() - timedelta(seconds=120)
        if timezone.localtime(before).date() != timezone.localdate():
            before = timezone.now()  # just after midnight: nothing of today is old enough
            settings.GATEWAY_LOG_ROLLUP_LAG_SECONDS = 0
        for status, reason in ((202, ""), (202, ""), (429, "rate_limited"), (401, "unauthenticated")):
            RequestLog.objects.create(channel=api_channel, channel_kind="api", status_code=status,
                                      rejection=reason, latency_ms=10, created_at=before)
        RequestLog.objects.create(channel=api_channel, channel_kind="api", status_code=429,
                                  rejection="rate_limited", latency_ms=10)  # within the lag: left to the live read
        tasks.rollup_daily()
        counts = {(r.status_code, r.rejection): r.requests for r in DailyRequestStats.objects.all()}
        expected_limited = 1 if settings.GATEWAY_LOG_ROLLUP_LAG_SECONDS else 2
        assert counts == {(202, ""): 2, (429, "rate_limited"): expected_limited, (401, "unauthenticated"): 1}


@pytest.mark.django_db
class TestRetention:
    def test_old_raw_rows_go_recent_rows_and_rollups_stay(self, agent, api_channel, customer, settings):
        settings.GATEWAY_LOG_RETENTION_DAYS = 30
        settings.GATEWAY_AUDIT_RETENTION_DAYS = 365
        now = timezone.now()
        old_call = call(agent, api_channel, customer, when=now - timedelta(days=31))
        fresh_call = call(agent, api_channel, customer, when=now - timedelta(days=29))
        old_day = timezone.localdate(old_call.created_at)
        rollup_day(old_day)
        RequestLog.objects.create(status_code=202, created_at=now - timedelta(days=40))
        RequestLog.objects.create(status_code=202)
        old_audit = AuditEvent.objects.create(action="apikey.revoked")
        AuditEvent.objects.filter(pk=old_audit.pk).update(created_at=now - timedelta(days=400))
        AuditEvent.objects.create(action="apikey.created")

        deleted = tasks.purge_old_logs_task()

        assert deleted == {"llm_calls": 1, "requests": 1, "audit_events": 1}
        assert list(LLMCall.objects.all()) == [fresh_call]
        assert RequestLog.objects.count() == 1 and AuditEvent.objects.get().action == "apikey.created"
        assert DailyCallStats.objects.get(day=old_day).calls == 1

    def test_purge_uses_the_setting(self, agent, api_channel, customer, settings):
        settings.GATEWAY_LOG_RETENTION_DAYS = 2
        call(agent, api_channel, customer, when=timezone.now() - timedelta(days=3))
        assert purge_old_logs()["llm_calls"] == 1

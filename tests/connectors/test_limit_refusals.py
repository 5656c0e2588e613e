"""Limits refusing webhook-channel messages, in each platform's wire form (issue: traffic and spend).

Slack and WeCom get their 200 (a non-200 makes them retry) and the sender gets one polite reply
per window; the CRM caller gets the 429 itself; a refused address gets 403 before its body is read.
"""
import time
import uuid

import pytest
from django.core.management import call_command

from apps.agents.runtime import agent_run
from apps.conversations.models import Message
from apps.quotas.models import IpRule, QuotaPolicy
from tests.connectors.connector_helpers import (
    assert_refused,
    crm_post,
    slack_event,
    slack_post,
    wecom_post,
    wecom_text_xml,
)
from tests.helpers import wait_until

pytestmark = pytest.mark.django_db


@pytest.fixture
def queued_notices(monkeypatch):
    """Whether each refusal queued a notice, in order: the real ``tell_refused`` decides on the
    request's thread, so this is known once the webhook has answered, with nothing to wait out."""
    from apps.connectors import base

    decisions, real = [], base.tell_refused

    def recording(*args, **kwargs):
        decisions.append(real(*args, **kwargs))
        return decisions[-1]

    monkeypatch.setattr(base, "tell_refused", recording)  # where the webhook path calls it
    return decisions


def crm_payload(text="hello", user="contact-1"):
    return {"contact": {"id": user}, "body": {"text": text},
            "event": {"id": f"evt-{uuid.uuid4()}", "created": int(time.time())}}


def test_slack_rate_limit_acks_and_replies_politely_once(client, slack_channel, platforms, queued_notices):
    QuotaPolicy.objects.create(scope="channel", channel=slack_channel, request_rate="1/m")
    assert slack_post(client, slack_channel, slack_event("app_mention.json")).status_code == 200
    for _ in range(3):
        response = slack_post(client, slack_channel, slack_event("app_mention.json"))
        assert response.status_code == 200  # acked, so Slack does not retry
    assert Message.objects.count() == 1
    [notice] = wait_until(lambda: platforms.state.slack_messages)
    assert notice["channel"] == "C123ABC456" and notice["text"].startswith("Sorry, I can't take this message")
    assert "1/m" in notice["text"] and "try again" in notice["text"]
    assert queued_notices == [True, False, False]  # one notice per window, not one per refusal
    assert len(platforms.state.slack_messages) == 1


def test_slack_quota_used_up_in_the_worker_is_told_in_the_thread(client, slack_channel, platforms, roles):
    QuotaPolicy.objects.create(scope="channel", channel=slack_channel, tokens_per_day=1)
    first, second = slack_event("app_mention.json"), slack_event("app_mention.json")
    slack_post(client, slack_channel, first)
    slack_post(client, slack_channel, second)  # admitted: nothing spent yet
    one, two = Message.objects.order_by("created_at")
    agent_run(one.id)
    agent_run(two.id)
    two.refresh_from_db()
    assert two.error_code == "quota_exceeded"
    told = platforms.state.slack_messages[-1]
    assert told["thread_ts"] == second["event"]["ts"] and "token quota" in told["text"]


def test_wecom_rate_limit_acks_and_replies_politely(client, wecom_channel, platforms):
    QuotaPolicy.objects.create(scope="channel", channel=wecom_channel, request_rate="1/m")
    assert wecom_post(client, wecom_channel, wecom_text_xml(text="第一条")).status_code == 200
    assert wecom_post(client, wecom_channel, wecom_text_xml(text="第二条")).status_code == 200
    assert Message.objects.count() == 1
    [notice] = wait_until(lambda: platforms.state.wecom_messages)
    assert notice["touser"] == "zhangsan" and "Sorry" in notice["text"]["content"]


def test_crm_caller_gets_the_429_itself(client, crm_channel):
    QuotaPolicy.objects.create(scope="channel", channel=crm_channel, request_rate="1/m")
    assert crm_post(client, crm_channel, crm_payload()).status_code in (200, 202)
    response = crm_post(client, crm_channel, crm_payload("again"))
    assert response.status_code == 429
    error = response.json()["error"]
    assert error["code"] == "rate_limited" and error["retry_after"] >= 1
    assert Message.objects.count() == 1


def test_refused_address_gets_403_before_the_signature_is_even_checked(client, slack_channel, platforms):
    IpRule.objects.create(action="allow", cidr="203.0.113.0/28", channel=slack_channel)
    client.defaults["REMOTE_ADDR"] = "198.51.100.9"
    response = slack_post(client, slack_channel, slack_event("app_mention.json"), signature="v0=forged")
    assert_refused(response, 403, code="ip_forbidden")
    client.defaults["REMOTE_ADDR"] = "203.0.113.3"
    allowed = slack_post(client, slack_channel, slack_event("app_mention.json"))
    assert allowed.status_code == 200 and Message.objects.count() == 1
    assert platforms.state.slack_messages == []  # no reply to a refused network


def test_wecom_channel_restricted_to_its_published_callback_ranges(client, wecom_channel, platforms, capsys):
    call_command("ip_allowlist", wecom_channel.slug, "--published")
    assert sorted(IpRule.objects.filter(channel=wecom_channel).values_list("cidr", flat=True)) == [
        "198.51.100.17/32", "203.0.113.0/28"]
    assert "2 allow rule(s) from wecom-published" in capsys.readouterr().out
    outside = wecom_post(client, wecom_channel, wecom_text_xml())
    assert outside.status_code == 403 and outside.json()["error"]["code"] == "ip_forbidden"
    client.defaults["REMOTE_ADDR"] = "198.51.100.17"
    assert wecom_post(client, wecom_channel, wecom_text_xml()).status_code == 200


def test_kinds_without_published_ranges_say_so(slack_channel):
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match="no published-ranges API"):
        call_command("ip_allowlist", slack_channel.slug, "--published")
    with pytest.raises(CommandError, match="not an IPv4"):
        call_command("ip_allowlist", slack_channel.slug, "--cidr", "nonsense")


def test_slack_unknown_sender_on_a_refusing_channel_gets_the_channels_polite_text(client, slack_channel, platforms,
                                                                                 queued_notices):
    slack_channel.unknown_senders = "refuse"
    slack_channel.refusal_message = "Sorry, this workspace bot only answers registered staff."
    slack_channel.save()
    for _ in range(2):
        assert slack_post(client, slack_channel, slack_event("app_mention.json")).status_code == 200
    assert not Message.objects.exists()
    [notice] = wait_until(lambda: platforms.state.slack_messages)
    assert notice["text"] == "Sorry, this workspace bot only answers registered staff."
    assert queued_notices == [True, False]  # once per window, however often they write
    assert len(platforms.state.slack_messages) == 1

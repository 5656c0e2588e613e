"""Outbound delivery: one place retries transient errors, honours Retry-After, and records failure."""
import pytest

from apps.agents.runtime import agent_run
from apps.conversations.models import Message
from apps.core.http import ConnectorError, send_with_retries
from tests.connectors.connector_helpers import slack_event, slack_post

pytestmark = pytest.mark.django_db


def inbound(client, slack_channel):
    slack_post(client, slack_channel, slack_event("app_mention.json"))
    return Message.objects.get(direction="in")


def test_slack_429_is_retried_after_retry_after_and_then_sent(client, slack_channel, platforms):
    platforms.script(slack_429=2, retry_after=0)
    reply = agent_run(inbound(client, slack_channel).id)
    reply.refresh_from_db()
    assert (reply.status, reply.attempts) == ("sent", 3)
    assert platforms.state.slack_rejected == 2 and len(platforms.state.slack_messages) == 1


def test_the_reply_is_marked_failed_after_the_last_try(client, slack_channel, platforms, settings, caplog):
    settings.CONNECTOR_SEND_ATTEMPTS = 3
    platforms.script(slack_429=10, retry_after=0)
    reply = agent_run(inbound(client, slack_channel).id)
    reply.refresh_from_db()
    assert (reply.status, reply.error_code, reply.attempts) == ("failed", "delivery_failed", 3)
    assert "429" in reply.error_message and "ratelimited" in reply.error_message
    assert platforms.state.slack_rejected == 3 and not platforms.state.slack_messages
    assert "reply delivery failed" in caplog.text
    assert "xoxb-test-bot-token" not in caplog.text + reply.error_message


def test_a_retry_after_longer_than_we_wait_fails_without_sleeping_it(client, slack_channel, platforms, settings):
    settings.CONNECTOR_SEND_MAX_WAIT_SECONDS = 5
    platforms.script(slack_429=1, retry_after=120)
    reply = agent_run(inbound(client, slack_channel).id)
    reply.refresh_from_db()
    assert (reply.status, reply.attempts) == ("failed", 1)


def test_permanent_errors_are_not_retried(client, slack_channel, platforms):
    platforms.script(slack_error="channel_not_found")
    reply = agent_run(inbound(client, slack_channel).id)
    reply.refresh_from_db()
    assert (reply.status, reply.attempts) == ("failed", 1)
    assert platforms.state.slack_rejected == 1


def test_send_with_retries_waits_at_least_retry_after(settings, monkeypatch):
    settings.CONNECTOR_SEND_BACKOFF_SECONDS = 0.01
    waits = []
    monkeypatch.setattr("time.sleep", waits.append)  # tenacity sleeps through time.sleep
    calls = iter([ConnectorError("busy", retry_after=2.0), ConnectorError("busy"), None])

    def send():
        if (error := next(calls)) is not None:
            raise error

    assert send_with_retries(send) == 3
    assert waits == [2.0, 0.02]  # Retry-After first, then exponential backoff


def test_a_channel_whose_secrets_are_gone_fails_the_reply_instead_of_crashing(client, slack_channel, platforms):
    message = inbound(client, slack_channel)
    slack_channel.secrets_ciphertext = ""
    slack_channel.save()
    reply = agent_run(message.id)
    reply.refresh_from_db()
    assert (reply.status, reply.error_code) == ("failed", "delivery_failed")
    assert not platforms.state.slack_messages


def test_a_failed_run_tells_the_slack_user_in_the_thread(client, slack_channel, platforms):
    slack_post(client, slack_channel, slack_event("app_mention.json", text="<@U0LAN0Z89> [[fail:400]]"))
    message = Message.objects.get()
    assert agent_run(message.id) is None
    message.refresh_from_db()
    assert message.status == "failed"
    [posted] = platforms.state.slack_messages
    assert posted["thread_ts"] == message.metadata["slack_thread_ts"] and "could not answer" in posted["text"]

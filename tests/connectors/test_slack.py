"""Slack Events API in, chat.postMessage out — replayed from Slack's documented payloads."""
import json
import time

import pytest
from slack_sdk.signature import SignatureVerifier

from apps.agents.runtime import agent_run
from apps.connectors.base import hmac_sha256_hex
from apps.conversations.models import Conversation, Message
from tests.connectors.connector_helpers import (
    SLACK_SECRET,
    assert_refusal_logged_and_audited,
    assert_refused,
    fixture_json,
    slack_event,
    slack_post,
)

pytestmark = pytest.mark.django_db


def test_docs_signature_example_verifies_with_the_same_verifier():
    example = fixture_json("slack/signature_example.json")
    verifier = SignatureVerifier(example["signing_secret"], clock=type("C", (), {"now": lambda self: 1531420618})())
    assert verifier.is_valid(example["body"], example["timestamp"], example["signature"])
    assert not verifier.is_valid(example["body"] + "x", example["timestamp"], example["signature"])


def test_url_verification_answers_the_challenge(client, slack_channel):
    response = slack_post(client, slack_channel, fixture_json("slack/url_verification.json"))
    assert response.status_code == 200
    assert response.json() == {"challenge": "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P"}
    assert not Message.objects.exists()


def test_app_mention_is_acked_at_once_and_answered_in_its_thread(
    client, slack_channel, platforms, django_capture_on_commit_callbacks
):
    payload = slack_event("app_mention.json")
    with django_capture_on_commit_callbacks() as queued:
        response = slack_post(client, slack_channel, payload)
    assert response.status_code == 200
    assert len(queued) == 1  # the agent runs in a worker, after the 200
    message = Message.objects.get()
    assert message.text == "is it everything a river should be?"  # our own @mention removed
    assert message.external_user_id == "U061F7AUR"
    assert message.conversation.external_thread_id == f"C123ABC456:{payload['event']['ts']}"

    reply = agent_run(message.id)
    assert reply.status == "sent"
    [posted] = platforms.state.slack_messages
    assert posted == {**posted, "channel": "C123ABC456", "thread_ts": payload["event"]["ts"],
                      "text": "Echo: is it everything a river should be?", "token": "xoxb-test-bot-token"}


def test_the_apps_verification_token_is_not_stored(client, slack_channel):
    payload = slack_event("app_mention.json")
    assert payload["token"]  # Slack puts the app's (legacy) Verification Token in every event
    slack_post(client, slack_channel, payload)
    raw = Message.objects.get().raw_payload
    assert "token" not in raw and raw["event"] == payload["event"]
    assert payload["token"] not in json.dumps(raw)


def test_thread_replies_continue_the_threads_conversation(client, slack_channel, platforms):
    root = slack_event("app_mention.json")
    slack_post(client, slack_channel, root)
    reply_in_thread = slack_event("app_mention.json", thread_ts=root["event"]["ts"], text="and a follow-up")
    slack_post(client, slack_channel, reply_in_thread)
    assert Conversation.objects.count() == 1
    first, second = Message.objects.order_by("created_at")
    agent_run(first.id)
    agent_run(second.id)
    assert [m["thread_ts"] for m in platforms.state.slack_messages] == [root["event"]["ts"]] * 2


def test_direct_message_is_one_conversation_answered_in_place(client, slack_channel, platforms):
    slack_post(client, slack_channel, slack_event("message_im.json"))
    slack_post(client, slack_channel, slack_event("message_im.json", text="second"))
    assert Conversation.objects.get().external_thread_id == "D024BE91L"
    for message in Message.objects.order_by("created_at"):
        agent_run(message.id)
    assert [(m["channel"], m["thread_ts"]) for m in platforms.state.slack_messages] == [("D024BE91L", None)] * 2


@pytest.mark.parametrize("payload", [
    pytest.param(lambda: slack_event("bot_message.json"), id="bot_message subtype"),
    pytest.param(lambda: slack_event("own_bot_thread_reply.json"), id="a bot's own thread reply"),
    pytest.param(lambda: slack_event("message_im.json", user="U0LAN0Z89"), id="our bot user"),
    pytest.param(lambda: slack_event("message_im.json", subtype="message_changed"), id="other subtype"),
])
def test_bot_and_subtype_messages_are_dropped_so_replies_never_loop(client, slack_channel, payload):
    response = slack_post(client, slack_channel, payload())
    assert response.status_code == 200
    assert not Message.objects.exists()


def test_retries_and_the_mention_plus_message_pair_run_the_agent_once(
    client, slack_channel, django_capture_on_commit_callbacks
):
    mention = slack_event("app_mention.json")
    with django_capture_on_commit_callbacks() as queued:
        slack_post(client, slack_channel, mention)
        slack_post(client, slack_channel, mention, **{"X-Slack-Retry-Num": "1", "X-Slack-Retry-Reason": "http_timeout"})
        # Slack also sends a ``message`` event (other event_id) for the same channel message.
        as_message = {**mention, "event_id": "EvOTHER", "event": {**mention["event"], "type": "message"}}
        slack_post(client, slack_channel, as_message)
    assert Message.objects.count() == 1
    assert len(queued) == 1


class TestRefusals:
    def test_forged_signature(self, client, slack_channel):
        assert_refused(slack_post(client, slack_channel, slack_event("app_mention.json"), secret="not-the-secret"),
                       401, code="unauthenticated")

    def test_forged_and_replayed_requests_are_logged_and_audited(self, client, slack_channel):
        forged = slack_post(client, slack_channel, slack_event("app_mention.json"), secret="not-the-secret")
        replayed = slack_post(client, slack_channel, slack_event("app_mention.json"), timestamp=int(time.time()) - 3600)
        for response, reason in ((forged, "signature_mismatch"), (replayed, "timestamp_outside_window")):
            assert_refusal_logged_and_audited(response, slack_channel, reason=reason)

    def test_missing_signature(self, client, slack_channel):
        assert_refused(slack_post(client, slack_channel, slack_event("app_mention.json"), signature=""), 401)

    def test_stale_timestamp_even_when_correctly_signed(self, client, slack_channel):
        assert_refused(slack_post(client, slack_channel, slack_event("app_mention.json"),
                                  timestamp=int(time.time()) - 6 * 60), 401)

    def test_body_changed_after_signing(self, client, slack_channel):
        payload = slack_event("app_mention.json")
        timestamp = str(int(time.time()))
        signed = json.dumps(payload).encode()
        signature = "v0=" + hmac_sha256_hex(SLACK_SECRET, b"v0:" + timestamp.encode() + b":" + signed)
        tampered = signed.replace(b"river", b"ocean")
        assert_refused(slack_post(client, slack_channel, None, body=tampered, timestamp=timestamp,
                                  signature=signature), 401)

    def test_wrong_content_type(self, client, slack_channel):
        assert_refused(slack_post(client, slack_channel, slack_event("app_mention.json"),
                                  content_type="text/plain"), 415, code="unsupported_media_type")

    def test_oversized_body(self, client, slack_channel, settings):
        settings.CONNECTOR_WEBHOOK_MAX_BODY_BYTES = 1024
        assert_refused(slack_post(client, slack_channel, slack_event("app_mention.json", text="x" * 2000)),
                       413, code="payload_too_large")

    def test_malformed_json_is_400(self, client, slack_channel):
        assert_refused(slack_post(client, slack_channel, None, body=b"{not json"), 400, code="invalid_request")

    def test_unknown_or_disabled_channel_is_404(self, client, slack_channel):
        assert_refused(client.post("/api/v1/channels/nope/webhook", data=b"{}", content_type="application/json"),
                       404)
        slack_channel.enabled = False
        slack_channel.save()
        assert_refused(slack_post(client, slack_channel, slack_event("app_mention.json")), 404)

    def test_channels_without_a_webhook_are_404(self, client, api_channel):
        assert_refused(client.post(f"/api/v1/channels/{api_channel.slug}/webhook", data=b"{}",
                                   content_type="application/json"), 404)

    def test_other_methods_are_refused(self, client, slack_channel):
        response = client.put(f"/api/v1/channels/{slack_channel.slug}/webhook", data=b"{}")
        assert_refused(response, 405, code="method_not_allowed")

    @pytest.mark.parametrize("body, signature", [
        (b'{"type": "url_verification", "challenge": "\xff"}', None),  # bytes that are not UTF-8
        (b'{"type": "url_verification", "challenge": "x"}', "v0=\xe9"),  # a signature that is not ASCII
    ])
    def test_undecodable_body_or_signature_is_401_not_500(self, client, slack_channel, body, signature):
        response = slack_post(client, slack_channel, None, body=body, secret="not-the-secret", signature=signature)
        assert_refused(response, 401, code="unauthenticated")
        assert_refusal_logged_and_audited(response, slack_channel, reason="signature_mismatch")

    @pytest.mark.parametrize("event_type", [["message"], {"a": 1}, [], 7, None])
    def test_an_event_type_that_is_not_a_string_is_acknowledged_and_dropped(self, client, slack_channel, event_type):
        response = slack_post(client, slack_channel, slack_event("message_im.json", type=event_type))
        assert response.status_code == 200
        assert not Message.objects.exists()

    def test_a_signed_body_that_is_not_utf8_is_400(self, client, slack_channel):
        assert_refused(slack_post(client, slack_channel, None, body=b'{"type": "\xff"}'), 400, code="invalid_request")

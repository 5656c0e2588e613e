"""CRM webhook (signed JSON in, signed callbacks out) and the WeCom group robot (outbound only)."""
import json
import time
import urllib.error
import urllib.request
from types import SimpleNamespace

import pytest

from apps.agents.runtime import agent_run
from apps.connectors import wecom_robot
from apps.connectors.crm import sign, sign_callback
from apps.conversations.models import Message
from apps.core.http import ConnectorError, send_with_retries
from tests.connectors.connector_helpers import CRM_SECRET, assert_refusal_logged_and_audited, assert_refused, crm_post

pytestmark = pytest.mark.django_db


def crm_event(text="Where is my order?", event_id="evt-1", contact="c-42"):
    return {"event": {"id": event_id, "created": int(time.time())}, "contact": {"id": contact, "name": "Ana"},
            "body": {"text": text}}


class TestCrm:
    def test_mapped_fields_make_the_message_and_the_reply_is_a_signed_callback(
        self, client, crm_channel, platforms, django_capture_on_commit_callbacks
    ):
        with django_capture_on_commit_callbacks() as queued:
            response = crm_post(client, crm_channel, crm_event())
        assert response.status_code == 202 and len(queued) == 1
        message = Message.objects.get()
        assert (message.text, message.external_id, message.external_user_id) == ("Where is my order?", "evt-1", "c-42")
        assert agent_run(message.id).status == "sent"
        [callback] = platforms.state.crm_callbacks
        body = json.loads(callback["body"])
        assert (body["reply_to"], body["user_id"]) == ("evt-1", "c-42")
        assert body["message"] == "Echo: Where is my order?"
        headers = {k.lower(): v for k, v in callback["headers"].items()}
        expected = sign_callback(CRM_SECRET, headers["x-gateway-timestamp"], callback["body"].encode())
        assert headers["x-gateway-signature"] == expected
        # Not the inbound scheme: the callback cannot be replayed at the webhook as a message.
        assert expected != sign(CRM_SECRET, headers["x-gateway-timestamp"], callback["body"].encode())

    def test_a_crm_verifying_callbacks_takes_ours_and_refuses_the_inbound_scheme(self, client, crm_channel, platforms):
        platforms.script(crm_secret=CRM_SECRET)
        crm_post(client, crm_channel, crm_event())
        assert agent_run(Message.objects.get().id).status == "sent"
        assert (len(platforms.state.crm_callbacks), platforms.state.crm_rejected) == (1, 0)
        body, stamp = b'{"message": "hi"}', str(int(time.time()))
        request = urllib.request.Request(platforms.crm_callback_url, data=body, method="POST", headers={
            "Content-Type": "application/json", "X-Gateway-Timestamp": stamp,
            "X-Gateway-Signature": sign(CRM_SECRET, stamp, body)})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)
        assert (refused.value.code, platforms.state.crm_rejected) == (401, 1)

    def test_one_contacts_messages_share_a_conversation_and_repeats_run_once(self, client, crm_channel):
        crm_post(client, crm_channel, crm_event(event_id="a"))
        crm_post(client, crm_channel, crm_event(event_id="a"))
        crm_post(client, crm_channel, crm_event(event_id="b", text="and another"))
        assert Message.objects.count() == 2
        assert len({m.conversation_id for m in Message.objects.all()}) == 1

    def test_callback_failures_are_retried_then_recorded(self, client, crm_channel, settings):
        settings.CONNECTOR_SEND_ATTEMPTS = 2
        crm_channel.config["callback_url"] = "http://127.0.0.1:9/unreachable"
        crm_channel.save()
        crm_post(client, crm_channel, crm_event())
        reply = agent_run(Message.objects.get().id)
        reply.refresh_from_db()
        assert (reply.status, reply.attempts, reply.error_code) == ("failed", 2, "delivery_failed")

    def test_forged_signature(self, client, crm_channel):
        assert_refused(crm_post(client, crm_channel, crm_event(), secret="guess"), 401)

    def test_a_callback_replayed_inward_is_refused_and_audited(self, client, crm_channel):
        body = json.dumps({"id": "m-1", "user_id": "c-42", "message": "Echo: hi", "reply_to": "evt-1"}).encode()
        stamp = str(int(time.time()))
        response = crm_post(client, crm_channel, None, body=body, timestamp=stamp,
                            signature=sign_callback(CRM_SECRET, stamp, body))
        assert_refused(response, 401, code="unauthenticated")
        assert_refusal_logged_and_audited(response, crm_channel, reason="callback_replayed")

    def test_stale_timestamp(self, client, crm_channel):
        assert_refused(crm_post(client, crm_channel, crm_event(), timestamp=int(time.time()) - 301), 401)

    def test_missing_mapped_field(self, client, crm_channel):
        payload = crm_event()
        del payload["body"]
        assert_refused(crm_post(client, crm_channel, payload), 400, code="invalid_request")

    def test_wrong_content_type_and_oversized_body(self, client, crm_channel, settings):
        assert_refused(crm_post(client, crm_channel, crm_event(), content_type="text/plain"), 415)
        settings.CONNECTOR_WEBHOOK_MAX_BODY_BYTES = 100
        assert_refused(crm_post(client, crm_channel, crm_event("x" * 500)), 413)


class TestGroupRobot:
    def test_posts_text_and_markdown(self, robot_channel, platforms):
        robot_channel.connector.post("deploy finished")
        robot_channel.config = {"msgtype": "markdown"}
        robot_channel.save()
        robot_channel.connector.post("**bold** news")
        key = robot_channel.secrets["webhook_key"]
        assert platforms.state.robot_messages == [
            {"key": key, "msgtype": "text", "text": {"content": "deploy finished"}},
            {"key": key, "msgtype": "markdown", "markdown": {"content": "**bold** news"}},
        ]

    def test_keeps_under_20_messages_a_minute(self, robot_channel, platforms, settings, monkeypatch):
        settings.CONNECTOR_SEND_MAX_WAIT_SECONDS = 1  # do not sleep out the minute in a test
        # The limit is per clock minute: the robot's clock stays inside this minute, so all 21 sends
        # fall in one window however long they take.
        inside_this_minute = time.time() // 60 * 60 + 1
        monkeypatch.setattr(wecom_robot, "time", SimpleNamespace(time=lambda: inside_this_minute))
        connector = robot_channel.connector
        for n in range(20):
            send_with_retries(lambda n=n: connector.post(f"note {n}"))
        with pytest.raises(ConnectorError, match="20 messages per minute"):
            send_with_retries(lambda: connector.post("one too many"))
        assert len(platforms.state.robot_messages) == 20  # the 21st never reached WeCom

    def test_is_outbound_only(self, client, robot_channel):
        assert_refused(client.post(f"/api/v1/channels/{robot_channel.slug}/webhook", data=b"{}",
                                   content_type="application/json"), 404)

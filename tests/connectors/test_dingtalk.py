"""DingTalk enterprise robot: signed HTTP callback in, sessionWebhook or robot send API out —
replayed from the open platform's documented example (tests/connectors/fixtures/dingtalk/README.md)."""
import base64
import hashlib
import hmac
import json
import time

import pytest
from django.core.cache import cache

from apps.agents.runtime import agent_run
from apps.connectors.dingtalk import sign
from apps.conversations.models import Message
from tests.connectors.conftest import make_channel
from tests.connectors.connector_helpers import assert_refusal_logged_and_audited, assert_refused, fixture_json
from tests.connectors.feishu_dingtalk_helpers import DINGTALK, dingtalk_config, dingtalk_message, dingtalk_post

pytestmark = pytest.mark.django_db


@pytest.fixture
def dingtalk_platform(platforms, settings):
    settings.DINGTALK_API_BASE_URL = platforms.dingtalk_base_url
    settings.DINGTALK_SESSION_WEBHOOK_BASE_URL = platforms.dingtalk_session_base_url
    cache.delete(f"dingtalk:access_token:{DINGTALK['app_key']}")
    return platforms


@pytest.fixture
def dingtalk_channel(agent):
    config, secrets = dingtalk_config()
    return make_channel("dingtalk", agent, config=config, secrets=secrets)


@pytest.fixture
def message(dingtalk_platform):
    """A new documented message whose session webhook points at the stand-in."""
    def build(**fields):
        return dingtalk_message(session_base=dingtalk_platform.dingtalk_session_base_url, **fields)
    return build


def inbound():
    return Message.objects.filter(direction="in").latest("created_at")


# --- the docs' sample vector ---------------------------------------------------------------


def test_sign_is_the_documented_hmac_over_timestamp_newline_secret():
    timestamp = fixture_json("dingtalk/callback_text_group.json")["headers"]["timestamp"]  # 1577262236757
    secret = "this-is-an-app-secret"
    expected = base64.b64encode(hmac.new(secret.encode(), f"{timestamp}\n{secret}".encode(),
                                         hashlib.sha256).digest()).decode()
    assert sign(timestamp, secret) == expected
    assert sign(str(int(timestamp) + 1), secret) != expected
    assert sign(timestamp, secret + "x") != expected


# --- messages --------------------------------------------------------------------------------


def test_documented_group_message_is_answered_through_its_session_webhook(
    client, dingtalk_channel, message, dingtalk_platform, django_capture_on_commit_callbacks
):
    payload = message()  # the documented " 你好" from staff id user123 in group "xxx"
    with django_capture_on_commit_callbacks() as queued:
        response = dingtalk_post(client, dingtalk_channel, payload)
    assert response.status_code == 200 and response.json() == {}
    assert len(queued) == 1
    received = inbound()
    assert received.text == "你好"
    assert received.external_user_id == "user123"  # senderStaffId
    assert received.conversation.external_thread_id == "xxx"
    assert "sendBySession" not in json.dumps(received.metadata) + json.dumps(received.raw_payload or {})

    reply = agent_run(received.id)
    assert reply.status == "sent"
    state = dingtalk_platform.state.dingtalk
    assert state.session_messages == [{"session": payload["sessionWebhook"].rsplit("=", 1)[1],
                                       "content": "Echo: 你好"}]
    assert state.api_messages == [] and state.token_requests == 0


def test_expired_session_in_a_one_to_one_chat_uses_batch_send(client, dingtalk_channel, message, dingtalk_platform):
    dingtalk_post(client, dingtalk_channel, message(conversation_type="1", session_valid_seconds=-10))
    agent_run(inbound().id)
    state = dingtalk_platform.state.dingtalk
    assert state.session_messages == []
    assert state.api_messages == [{"api": "oToMessages/batchSend", "robotCode": DINGTALK["robot_code"],
                                   "userIds": ["user123"], "content": "Echo: 你好"}]


def test_expired_session_in_a_group_uses_group_send(client, dingtalk_channel, message, dingtalk_platform):
    dingtalk_post(client, dingtalk_channel, message(session_valid_seconds=30))  # inside the safety margin
    agent_run(inbound().id)
    assert dingtalk_platform.state.dingtalk.api_messages == [
        {"api": "groupMessages/send", "robotCode": DINGTALK["robot_code"], "openConversationId": "xxx",
         "content": "Echo: 你好"}]


def test_a_refused_session_webhook_falls_back_to_the_api(client, dingtalk_channel, message, dingtalk_platform):
    dingtalk_post(client, dingtalk_channel, message(conversation_type="1"))
    dingtalk_platform.script(expire_dingtalk_sessions=True)
    agent_run(inbound().id)
    assert [m["api"] for m in dingtalk_platform.state.dingtalk.api_messages] == ["oToMessages/batchSend"]


def test_a_session_webhook_elsewhere_is_never_called(client, dingtalk_channel, message, dingtalk_platform):
    dingtalk_post(client, dingtalk_channel,
                  message(sessionWebhook="http://169.254.169.254/robot/sendBySession?session=x"))
    agent_run(inbound().id)
    state = dingtalk_platform.state.dingtalk
    assert state.session_messages == [] and [m["api"] for m in state.api_messages] == ["groupMessages/send"]


def test_the_access_token_is_cached_and_fetched_again_when_refused(
    client, dingtalk_channel, message, dingtalk_platform
):
    for text in ("one", "two"):
        dingtalk_post(client, dingtalk_channel, message(text=text, conversation_type="1", session_valid_seconds=0))
        agent_run(inbound().id)
    assert dingtalk_platform.state.dingtalk.token_requests == 1
    dingtalk_platform.script(expire_dingtalk_tokens=True)
    dingtalk_post(client, dingtalk_channel, message(text="three", conversation_type="1", session_valid_seconds=0))
    agent_run(inbound().id)
    state = dingtalk_platform.state.dingtalk
    assert [m["content"] for m in state.api_messages] == ["Echo: one", "Echo: two", "Echo: three"]
    assert state.token_requests == 2


def test_sender_without_a_staff_id_is_identified_by_sender_id(client, dingtalk_channel, message):
    dingtalk_post(client, dingtalk_channel, message(senderStaffId=""))
    assert inbound().external_user_id == "$:LWCP_v1:$Ff09GIxxxxx"


def test_a_redelivered_message_runs_the_agent_once(client, dingtalk_channel, message,
                                                   django_capture_on_commit_callbacks):
    payload = message()
    with django_capture_on_commit_callbacks() as queued:
        assert dingtalk_post(client, dingtalk_channel, payload).status_code == 200
        assert dingtalk_post(client, dingtalk_channel, payload).status_code == 200
    assert Message.objects.filter(direction="in").count() == 1
    assert len(queued) == 1


def test_a_redelivery_with_another_session_webhook_does_not_redirect_the_answer(
    client, dingtalk_channel, message, dingtalk_platform
):
    """The signature covers only the timestamp: a replayed msgId with someone else's session
    webhook is a duplicate, and the answer still goes where the first delivery asked."""
    payload = message()
    assert dingtalk_post(client, dingtalk_channel, payload).status_code == 200
    elsewhere = {**payload, "sessionWebhook": payload["sessionWebhook"].rsplit("=", 1)[0] + "=someone-else"}
    assert dingtalk_post(client, dingtalk_channel, elsewhere).status_code == 200
    agent_run(inbound().id)
    assert [m["session"] for m in dingtalk_platform.state.dingtalk.session_messages] == [
        payload["sessionWebhook"].rsplit("=", 1)[1]]


@pytest.mark.parametrize("fields", [
    pytest.param({"msgtype": "picture", "content": {"downloadCode": "x"}}, id="a picture"),
    pytest.param({"text": "   "}, id="only whitespace"),
])
def test_messages_without_text_are_acknowledged_and_dropped(client, dingtalk_channel, message, fields):
    assert dingtalk_post(client, dingtalk_channel, message(**fields)).status_code == 200
    assert not Message.objects.exists()


def test_a_timestamp_within_the_documented_hour_is_accepted(client, dingtalk_channel, message):
    half_an_hour_ago = int((time.time() - 1800) * 1000)  # beyond the 5 minutes other channels allow
    assert dingtalk_post(client, dingtalk_channel, message(), timestamp=half_an_hour_ago).status_code == 200


# --- refusals ----------------------------------------------------------------------------------


class TestRefusals:
    def test_forged_and_replayed_callbacks_are_refused_logged_and_audited(self, client, dingtalk_channel, message):
        forged = dingtalk_post(client, dingtalk_channel, message(), secret="not-the-secret")
        replayed = dingtalk_post(client, dingtalk_channel, message(),
                                 timestamp=int((time.time() - 3700) * 1000))
        malformed = dingtalk_post(client, dingtalk_channel, message(), timestamp="yesterday")
        for response, reason in ((forged, "signature_mismatch"), (replayed, "timestamp_outside_window"),
                                 (malformed, "timestamp_malformed")):
            assert_refused(response, 401, code="unauthenticated")
            assert_refusal_logged_and_audited(response, dingtalk_channel, reason=reason)

    def test_the_documented_placeholder_sign_is_refused(self, client, dingtalk_channel, message):
        headers = fixture_json("dingtalk/callback_text_group.json")["headers"]
        assert_refused(dingtalk_post(client, dingtalk_channel, message(), sign=headers["sign"]), 401)

    def test_missing_sign(self, client, dingtalk_channel, message):
        assert_refused(dingtalk_post(client, dingtalk_channel, message(), sign=""), 401)

    def test_timestamp_in_seconds_instead_of_milliseconds(self, client, dingtalk_channel, message):
        assert_refused(dingtalk_post(client, dingtalk_channel, message(), timestamp=int(time.time())), 401)

    @pytest.mark.parametrize("body", [b"{not json", b'["a"]'])
    def test_malformed_bodies_are_400(self, client, dingtalk_channel, body):
        assert_refused(dingtalk_post(client, dingtalk_channel, body=body), 400, code="invalid_request")

    @pytest.mark.parametrize("fields", [{"msgId": ""}, {"conversationId": None}, {"text": "hello"},
                                        {"conversationType": "3"}, {"senderStaffId": "", "senderId": ""},
                                        {"createAt": "noon"}])
    def test_text_messages_missing_what_they_need_are_400(self, client, dingtalk_channel, message, fields):
        payload = {**message(), **fields}
        assert_refused(dingtalk_post(client, dingtalk_channel, payload), 400)

    def test_wrong_content_type_is_415(self, client, dingtalk_channel, message):
        assert_refused(dingtalk_post(client, dingtalk_channel, message(), content_type="text/plain"), 415)


@pytest.mark.parametrize("expires", [10**400, 1e300, -1, "soon", [1]])  # (NaN, inf: refused as unstorable)
def test_a_session_expiry_that_is_not_a_time_keeps_no_session_webhook(
        client, dingtalk_channel, message, dingtalk_platform, expires):
    payload = message(conversation_type="1", sessionWebhookExpiredTime=expires)
    response = dingtalk_post(client, dingtalk_channel, body=json.dumps(payload).encode())
    assert response.status_code == 200, response.content
    agent_run(inbound().id)
    state = dingtalk_platform.state.dingtalk
    assert state.session_messages == [] and len(state.api_messages) == 1  # answered through the API instead

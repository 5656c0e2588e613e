"""Feishu and DingTalk through real processes: Daphne takes the signed push, a Celery worker runs
the agent against fake_llm and replies through the local platform stand-ins."""
import json
import time
import urllib.request

import pytest

from apps.agents.models import Agent, LLMModel, Provider
from apps.connectors.dingtalk import sign as dingtalk_sign
from apps.connectors.models import Channel
from apps.conversations.models import Message
from tests.connectors.feishu_dingtalk_helpers import (
    DINGTALK,
    dingtalk_config,
    dingtalk_message,
    feishu_body,
    feishu_config,
    feishu_event,
    feishu_headers,
)
from tests.helpers import wait_until

pytestmark = [pytest.mark.services, pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def live(services_stack):
    services_stack.platforms.reset()
    provider = Provider.objects.create(slug="fake", name="Fake", base_url=services_stack.llm_url)
    agent = Agent.objects.create(slug="assistant", name="Assistant", system_prompt="Be brief.",
                                 model=LLMModel.objects.create(provider=provider, name="fake-gpt"))
    config, secrets = feishu_config()
    feishu = Channel(slug="feishu", name="Feishu", kind="feishu", default_agent=agent, config=config)
    feishu.set_secrets(**secrets)
    feishu.save()
    config, secrets = dingtalk_config()
    dingtalk = Channel(slug="dingtalk", name="DingTalk", kind="dingtalk", default_agent=agent, config=config)
    dingtalk.set_secrets(**secrets)
    dingtalk.save()
    return services_stack


def post_raw(url: str, body: bytes, headers: dict) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, method="POST",
                                     headers={"Content-Type": "application/json; charset=utf-8", **headers})
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.status, response.read()


def test_feishu_push_is_answered_once_with_the_reply_api(live):
    event = feishu_event(text="@_user_1 你好")
    body = feishu_body(event)
    url = f"{live.url}/api/v1/channels/feishu/webhook"
    assert post_raw(url, body, feishu_headers(body)) == (200, b"{}")
    # Feishu redelivers the same event (a new push: new timestamp and nonce, same event_id).
    assert post_raw(url, body, feishu_headers(body, nonce="retry-1"))[0] == 200
    replies = live.platforms.state.feishu.replies
    assert wait_until(lambda: replies, timeout=30), live.stack.logs()
    assert replies[0]["message_id"] == event["event"]["message"]["message_id"]
    assert replies[0]["text"] == "Echo: 你好"
    assert wait_until(lambda: Message.objects.filter(direction="out", status="sent").exists(), timeout=30)
    assert Message.objects.filter(direction="in").count() == 1
    assert len(replies) == 1


def test_dingtalk_callback_is_answered_once_then_through_the_api(live):
    url = f"{live.url}/api/v1/channels/dingtalk/webhook"

    def post(payload) -> int:
        timestamp = str(int(time.time() * 1000))
        body = json.dumps(payload, ensure_ascii=False).encode()
        headers = {"timestamp": timestamp, "sign": dingtalk_sign(timestamp, DINGTALK["app_secret"])}
        return post_raw(url, body, headers)[0]

    state = live.platforms.state.dingtalk
    fresh = dingtalk_message(session_base=live.platforms.dingtalk_session_base_url, text="在吗")
    assert post(fresh) == 200
    assert post(fresh) == 200  # redelivered: same msgId
    assert wait_until(lambda: state.session_messages, timeout=30), live.stack.logs()
    assert state.session_messages[0]["content"] == "Echo: 在吗"
    # A one-to-one message whose session webhook has expired: the robot send API, with a token.
    assert post(dingtalk_message(session_base=live.platforms.dingtalk_session_base_url, text="还在吗",
                                 conversation_type="1", session_valid_seconds=-1)) == 200
    assert wait_until(lambda: state.api_messages, timeout=30), live.stack.logs()
    assert state.api_messages[0] == {"api": "oToMessages/batchSend", "robotCode": DINGTALK["robot_code"],
                                     "userIds": ["user123"], "content": "Echo: 还在吗"}
    assert state.token_requests == 1
    assert Message.objects.filter(direction="in", channel__kind="dingtalk").count() == 2
    assert len(state.session_messages) == 1

"""Feishu and DingTalk through real processes: Daphne takes the signed push, a Celery worker runs
the agent against fake_llm and replies through the local platform stand-ins."""
import time
import urllib.request

import pytest

from apps.agents.models import Agent, LLMModel, Provider
from apps.connectors.models import Channel
from apps.conversations.models import Message
from tests.connectors.feishu_dingtalk_helpers import feishu_body, feishu_config, feishu_event, feishu_headers

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
    return services_stack


def post_raw(url: str, body: bytes, headers: dict) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, method="POST",
                                     headers={"Content-Type": "application/json; charset=utf-8", **headers})
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.status, response.read()


def wait_for(predicate, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def test_feishu_push_is_answered_once_with_the_reply_api(live):
    event = feishu_event(text="@_user_1 你好")
    body = feishu_body(event)
    url = f"{live.url}/api/v1/channels/feishu/webhook"
    assert post_raw(url, body, feishu_headers(body)) == (200, b"{}")
    # Feishu redelivers the same event (a new push: new timestamp and nonce, same event_id).
    assert post_raw(url, body, feishu_headers(body, nonce="retry-1"))[0] == 200
    replies = live.platforms.state.feishu.replies
    assert wait_for(lambda: replies), live.stack.logs()
    assert replies[0]["message_id"] == event["event"]["message"]["message_id"]
    assert replies[0]["text"] == "Echo: 你好"
    assert wait_for(lambda: Message.objects.filter(direction="out", status="sent").exists())
    assert Message.objects.filter(direction="in").count() == 1
    assert len(replies) == 1

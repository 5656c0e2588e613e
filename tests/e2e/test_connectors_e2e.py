"""Slack and WeCom through real processes: Daphne takes the signed webhook, a Celery worker runs the
agent against fake_llm and replies through the local platform servers."""
import json
import time
import urllib.request
import uuid

import pytest

from apps.agents.models import Agent, LLMModel, Provider
from apps.connectors.models import Channel
from apps.conversations.models import Message
from tests.connectors.connector_helpers import (
    SLACK_BOT_USER,
    SLACK_SECRET,
    WECOM,
    slack_event,
    wecom_crypto,
    wecom_text_xml,
)
from tests.helpers import wait_until

pytestmark = [pytest.mark.services, pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def live(services_stack):
    services_stack.platforms.reset()
    provider = Provider.objects.create(slug="fake", name="Fake", base_url=services_stack.llm_url)
    agent = Agent.objects.create(slug="assistant", name="Assistant", system_prompt="Be brief.",
                                 model=LLMModel.objects.create(provider=provider, name="fake-gpt"))
    slack = Channel(slug="slack", name="Slack", kind="slack", default_agent=agent,
                    config={"bot_user_id": SLACK_BOT_USER})
    slack.set_secrets(signing_secret=SLACK_SECRET, bot_token="xoxb-e2e")
    slack.save()
    wecom = Channel(slug="wecom", name="WeCom", kind="wecom", default_agent=agent,
                    config={"corp_id": WECOM["corp_id"], "agent_id": WECOM["agent_id"]})
    wecom.set_secrets(**{k: WECOM[k] for k in ("token", "encoding_aes_key", "secret")})
    wecom.save()
    return services_stack


def post_raw(url: str, body: bytes, content_type: str, headers: dict) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": content_type, **headers})
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.status, response.read()


def post_slack(live, payload) -> int:
    from apps.connectors.base import hmac_sha256_hex

    body, timestamp = json.dumps(payload).encode(), str(int(time.time()))
    signature = "v0=" + hmac_sha256_hex(SLACK_SECRET, b"v0:" + timestamp.encode() + b":" + body)
    status, _ = post_raw(f"{live.url}/api/v1/channels/slack/webhook", body, "application/json",
                         {"X-Slack-Request-Timestamp": timestamp, "X-Slack-Signature": signature})
    return status


def test_slack_dm_two_messages_are_answered_in_order_despite_a_429(live):
    live.platforms.script(slack_429=1, retry_after=1)
    channel = f"D{uuid.uuid4().hex[:8].upper()}"
    # The first takes the model a second; a free worker thread picks the second at once and must wait.
    assert post_slack(live, slack_event("message_im.json", channel=channel, text="first [[delay:1]]")) == 200
    assert post_slack(live, slack_event("message_im.json", channel=channel, text="second")) == 200
    assert wait_until(lambda: len(live.platforms.state.slack_messages) == 2, timeout=30), live.stack.logs()
    assert [m["text"] for m in live.platforms.state.slack_messages] == ["Echo: first", "Echo: second"]
    assert live.platforms.state.slack_rejected == 1  # the 429 was retried after its Retry-After

    def sent() -> list[tuple[str, int]]:
        return [(r.status, r.attempts) for r in Message.objects.filter(direction="out").order_by("created_at")]

    # Slack has the reply before the worker records it as sent: wait for that record.
    assert wait_until(lambda: sent() == [("sent", 2), ("sent", 1)], timeout=30), sent()


def test_wecom_callback_is_answered_through_message_send(live):
    crypto, timestamp, nonce = wecom_crypto(), str(int(time.time())), "e2e"
    encrypt = crypto.encrypt(wecom_text_xml(user="lisi", text="在吗"))
    body = (f"<xml><ToUserName><![CDATA[{WECOM['corp_id']}]]></ToUserName>"
            f"<Encrypt><![CDATA[{encrypt}]]></Encrypt></xml>").encode()
    query = f"msg_signature={crypto.signature(timestamp, nonce, encrypt)}&timestamp={timestamp}&nonce={nonce}"
    status, answer = post_raw(f"{live.url}/api/v1/channels/wecom/webhook?{query}", body, "text/xml", {})
    assert (status, answer) == (200, b"")
    assert wait_until(lambda: live.platforms.state.wecom_messages, timeout=30), live.stack.logs()
    assert live.platforms.state.wecom_messages[0]["text"] == {"content": "Echo: 在吗"}

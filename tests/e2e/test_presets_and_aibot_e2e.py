"""HubSpot, Zendesk and the WeCom AI bot through real processes: Daphne takes the signed request,
a Celery worker runs the agent against fake_llm, and the reply reaches the local platform stand-in
(the CRM callback, the AI bot's stream refreshes, its response_url)."""
import json
import time
import urllib.request
import uuid

import pytest

from apps.agents.models import Agent, LLMModel, Provider
from apps.connectors.crm_presets import hubspot_v3_signature, zendesk_signature
from apps.connectors.models import Channel
from apps.connectors.wecom_aibot import stream_id_for
from apps.conversations.models import Message
from tests.connectors.aibot_helpers import AIBOT, open_reply, refresh_callback, signed_callback, text_callback
from tests.connectors.connector_helpers import fixture_json
from tests.connectors.crm_preset_helpers import HUBSPOT_CLIENT_SECRET, ZENDESK_SECRET, zendesk_timestamp
from tests.helpers import wait_until

pytestmark = [pytest.mark.services, pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def live(services_stack):
    services_stack.platforms.reset()
    provider = Provider.objects.create(slug="fake", name="Fake", base_url=services_stack.llm_url)
    agent = Agent.objects.create(slug="assistant", name="Assistant", system_prompt="Be brief.",
                                 model=LLMModel.objects.create(provider=provider, name="fake-gpt"))
    callback_url = services_stack.platforms.crm_callback_url
    field_map = {"user_id": "contact_id", "message": "question", "external_id": "event_id"}
    for slug, kind, config, secrets in (
        ("hubspot", "hubspot", {"callback_url": callback_url, "field_map": field_map},
         {"client_secret": HUBSPOT_CLIENT_SECRET}),
        ("zendesk", "zendesk", {"callback_url": callback_url}, {"secret": ZENDESK_SECRET}),
        ("aibot", "wecom_aibot", {"bot_id": AIBOT["bot_id"]},
         {"token": AIBOT["token"], "encoding_aes_key": AIBOT["encoding_aes_key"]}),
        ("aibot-short", "wecom_aibot", {"bot_id": AIBOT["bot_id"], "stream_window_seconds": 1},
         {"token": AIBOT["token"], "encoding_aes_key": AIBOT["encoding_aes_key"]}),
    ):
        channel = Channel(slug=slug, name=slug, kind=kind, default_agent=agent, config=config)
        channel.set_secrets(**secrets)
        channel.save()
    return services_stack


def post(url: str, body: bytes, headers: dict) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, method="POST",
                                     headers={"Content-Type": "application/json", **headers})
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.status, response.read()


def callbacks_for(live, reply_to: str) -> list[dict]:
    return [body for c in live.platforms.state.crm_callbacks if (body := json.loads(c["body"]))["reply_to"] == reply_to]


def test_hubspot_signed_webhook_is_answered_once_through_the_crm_callback(live):
    url = f"{live.url}/api/v1/channels/hubspot/webhook"
    event_id = f"enr-{uuid.uuid4().hex[:8]}"
    body = json.dumps({"event_id": event_id, "contact_id": "501", "question": "Where is my order?"}).encode()
    for _ in range(2):  # a redelivery: same event, new timestamp and signature
        timestamp = str(int(time.time() * 1000))
        signature = hubspot_v3_signature(HUBSPOT_CLIENT_SECRET, method="POST", uri=url, body=body, timestamp=timestamp)
        headers = {"X-HubSpot-Signature-v3": signature, "X-HubSpot-Request-Timestamp": timestamp}
        assert post(url, body, headers)[0] == 202
    replies = wait_until(lambda: callbacks_for(live, event_id), timeout=30)
    assert replies, live.stack.logs()
    assert [r["message"] for r in replies] == ["Echo: Where is my order?"]
    assert Message.objects.filter(external_id=event_id).count() == 1
    assert Message.objects.filter(reply_to__external_id=event_id).count() == 1


def test_zendesk_end_user_message_is_answered_through_the_crm_callback(live):
    payload = fixture_json("zendesk/message_added.json")
    payload["id"] = uuid.uuid4().hex
    payload["event"]["actor"] = {"id": "end-user-7", "name": "Ana", "type": "end_user"}
    payload["event"]["message"]["body"] = "Can I change my plan?"
    body, timestamp = json.dumps(payload).encode(), zendesk_timestamp()
    status, _ = post(f"{live.url}/api/v1/channels/zendesk/webhook", body, {
        "X-Zendesk-Webhook-Signature": zendesk_signature(ZENDESK_SECRET, timestamp=timestamp, body=body),
        "X-Zendesk-Webhook-Signature-Timestamp": timestamp})
    assert status == 202
    replies = wait_until(lambda: callbacks_for(live, payload["id"]), timeout=30)
    assert replies, live.stack.logs()
    assert [r["message"] for r in replies] == ["Echo: Can I change my plan?"]


def aibot_call(live, slug: str, plaintext: dict) -> dict:
    query, body = signed_callback(plaintext)
    status, answer = post(f"{live.url}/api/v1/channels/{slug}/webhook?{query}", body, {})
    assert status == 200
    return open_reply(answer)["stream"]


def test_aibot_stream_refreshes_return_growing_text_until_finish(live):
    callback = text_callback("tell me a long story please [[slow:0.4]]")
    stream_id = stream_id_for("aibot", callback["msgid"])
    assert aibot_call(live, "aibot", callback) == {"id": stream_id, "finish": False, "content": ""}
    seen: list[str] = []

    def refreshed_to_the_end():
        stream = aibot_call(live, "aibot", refresh_callback(stream_id))
        seen.append(stream["content"])
        return stream["finish"]

    assert wait_until(refreshed_to_the_end, timeout=30), (seen, live.stack.logs())
    assert seen[-1] == "Echo: tell me a long story please"
    assert all(later.startswith(earlier) for earlier, later in zip(seen, seen[1:], strict=False))  # only grows
    partial = {text for text in seen if text and text != seen[-1]}
    assert partial, seen  # refreshes showed the answer while the model was still writing it
    assert aibot_call(live, "aibot", text_callback("again", msgid=callback["msgid"]))["id"] == stream_id  # redelivery
    assert Message.objects.filter(external_id=callback["msgid"]).count() == 1


def test_aibot_answer_after_the_stream_window_goes_to_response_url(live):
    response_url = live.platforms.aibot_response_url()
    callback = text_callback("think hard [[delay:3]]", response_url=response_url)
    stream_id = stream_id_for("aibot-short", callback["msgid"])
    aibot_call(live, "aibot-short", callback)
    closed = wait_until(lambda: (s := aibot_call(live, "aibot-short", refresh_callback(stream_id)))["finish"] and s,
                        timeout=30)
    assert closed == {"id": stream_id, "finish": True, "content": ""}, live.stack.logs()
    posted = wait_until(lambda: live.platforms.state.aibot_responses, timeout=30)
    assert posted, live.stack.logs()
    assert posted == [{"code": response_url.rsplit("=", 1)[1], "msgtype": "markdown",
                       "markdown": {"content": "Echo: think hard"}}]

"""The whole gateway on real services and real processes: Daphne, a Celery worker, fake_llm."""
import asyncio
import json
from concurrent.futures import ThreadPoolExecutor

import pytest
import websockets

from apps.agents.models import Agent, LLMModel, Provider
from apps.connectors.models import Channel
from apps.conversations.models import Direction, Message
from apps.identities.models import ApiKey
from apps.logs.models import LLMCall
from devtools.stack import http, visitor_token
from tests.helpers import wait_until

pytestmark = [pytest.mark.services, pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def live(services_stack, customer):
    provider = Provider.objects.create(slug="fake", name="Fake", base_url=services_stack.llm_url)
    model = LLMModel.objects.create(provider=provider, name="fake-gpt")
    agent = Agent.objects.create(slug="assistant", name="Assistant", model=model, system_prompt="Be brief.")
    Channel.objects.create(slug="api", name="API", kind="api", default_agent=agent)
    Channel.objects.create(slug="web", name="Web chat", kind="webchat", default_agent=agent)
    _key, raw = ApiKey.generate(user=customer)
    services_stack.key = raw
    services_stack.auth = {"Authorization": f"Bearer {raw}"}
    return services_stack


def post_message(live, body, headers=None):
    return http("POST", f"{live.url}/api/v1/messages", body, {**live.auth, **(headers or {})})


def test_api_message_with_wait_is_answered_by_the_worker(live):
    status, body, _ = post_message(live, {"message": "hello worker", "wait": 30})
    assert status == 200, body
    assert body["reply"]["message"] == "Echo: hello worker"
    assert body["reply"]["model"] == "fake-gpt" and body["reply"]["latency_ms"] >= 0
    reply = Message.objects.get(pk=body["reply"]["message_id"])
    # The waiter is woken by the delivery itself; the worker records "sent" just after.
    reply = wait_until(lambda: Message.objects.filter(pk=reply.pk, status="sent").first(), timeout=30)
    assert reply and reply.reply_to_id is not None
    call = LLMCall.objects.get(message_id=body["message_id"])
    assert call.status == "ok" and call.total_tokens == body["reply"]["usage"]["total_tokens"]


def test_openai_face_is_answered_by_the_worker(live):
    """Non-streamed and streamed completions through Redis and the worker, one message each."""
    import openai

    client = openai.OpenAI(base_url=f"{live.url}/v1", api_key=live.key, max_retries=0, timeout=30)
    completion = client.chat.completions.create(model="assistant", messages=[{"role": "user", "content": "face"}])
    assert completion.choices[0].message.content == "Echo: face"
    stream = client.chat.completions.create(model="assistant", stream=True,
                                            messages=[{"role": "user", "content": "streamed face answer"}])
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == "Echo: streamed face answer"
    inbound = Message.objects.filter(direction=Direction.INBOUND).order_by("created_at")
    assert [(m.text, m.status) for m in inbound] == [("face", "answered"), ("streamed face answer", "answered")]
    assert LLMCall.objects.filter(message__in=inbound).count() == 2


def test_accepted_without_wait_lands_in_the_conversation(live):
    status, body, _ = post_message(live, {"message": "later"})
    assert status == 202
    url = f"{live.url}/api/v1/conversations/{body['conversation_id']}/messages"

    def answered():
        history = http("GET", url, headers=live.auth)[1]
        return history if len(history["messages"]) == 2 else None

    history = wait_until(answered, timeout=30)
    assert history and [m["message"] for m in history["messages"]] == ["later", "Echo: later"]


def test_concurrent_duplicate_deliveries_are_answered_once(live):
    def deliver(_):
        return post_message(live, {"message": "charge my card", "wait": 30}, {"Idempotency-Key": "pay-1"})

    with ThreadPoolExecutor(5) as pool:
        results = list(pool.map(deliver, range(5)))
    assert {status for status, _body, _h in results} == {200}
    assert len({body["message_id"] for _s, body, _h in results}) == 1
    assert len({body["reply"]["message_id"] for _s, body, _h in results}) == 1
    message_id = results[0][1]["message_id"]
    assert Message.objects.filter(reply_to_id=message_id).count() == 1
    assert LLMCall.objects.filter(message_id=message_id).count() == 1


def test_llm_error_gives_an_error_response_and_a_failed_call_row(live):
    status, body, _ = post_message(live, {"message": "break [[fail:500]]", "wait": 30})
    assert status == 502
    assert body["error"]["code"] == "agent_failed"
    assert Message.objects.get(pk=body["message_id"]).status == "failed"
    calls = LLMCall.objects.filter(message_id=body["message_id"]).order_by("attempt")
    assert [c.attempt for c in calls] == [1, 2, 3]  # the first try and two retries, all logged
    assert all(c.status == "error" and "500" in c.error for c in calls)


def web_chat(live, frames_to_send, until=("reply", "error"), visitor=None):
    ws_url = live.url.replace("http", "ws") + f"/ws/chat/web/?visitor={visitor or visitor_token(live.url, 'web')}"

    async def run():
        received = []
        async with websockets.connect(ws_url) as ws:
            for frame in frames_to_send:
                await ws.send(json.dumps(frame))
                while True:
                    received.append(json.loads(await asyncio.wait_for(ws.recv(), 30)))
                    if received[-1]["type"] in until:
                        break
        return received

    return asyncio.run(run())


def test_web_chat_ack_deltas_reply(live):
    frames = web_chat(live, [{"type": "message", "message": "stream it [[slow:0.01]]", "client_id": "c-1"}])
    assert frames[0]["type"] == "ack"
    deltas = [f["delta"] for f in frames if f["type"] == "delta"]
    assert len(deltas) > 1
    assert frames[-1]["type"] == "reply"
    assert "".join(deltas) == frames[-1]["message"] == "Echo: stream it"


def test_web_chat_resend_is_acknowledged_but_answered_once(live):
    token = visitor_token(live.url, "web")
    frame = {"type": "message", "message": "only once", "client_id": "c-42"}
    first = web_chat(live, [frame], visitor=token)
    again = web_chat(live, [frame], until=("ack",), visitor=token)
    assert again[-1]["type"] == "ack" and again[-1]["duplicate"] is True
    assert again[-1]["message_id"] == first[0]["message_id"]
    assert Message.objects.filter(reply_to_id=first[0]["message_id"]).count() == 1


def test_web_chat_llm_error_is_an_error_frame(live):
    frames = web_chat(live, [{"type": "message", "message": "oops [[fail:503]]"}])
    assert frames[-1]["type"] == "error" and frames[-1]["code"] == "agent_failed"
    assert frames[-1]["reply_to"] == frames[0]["message_id"]
    calls = LLMCall.objects.filter(message_id=frames[0]["message_id"])
    assert calls.count() == 3 and {c.status for c in calls} == {"error"}  # retried twice

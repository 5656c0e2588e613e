"""The embedded default end to end (what `make run` starts): no PostgreSQL, Redis or worker."""
import asyncio
import json

import pytest
import websockets

from devtools.stack import http, visitor_token

pytestmark = pytest.mark.e2e


def test_api_message_with_wait_gets_the_reply(embedded_stack):
    key = embedded_stack.demo["api_keys"]["customer"]
    status, body, _ = http("POST", f"{embedded_stack.url}/api/v1/messages", {"message": "ping", "wait": 20},
                           {"Authorization": f"Bearer {key}"})
    assert status == 200, body
    assert body["reply"]["message"] == "Echo: ping"
    assert body["reply"]["usage"]["total_tokens"] > 0
    status, history, _ = http("GET", f"{embedded_stack.url}/api/v1/conversations/{body['conversation_id']}/messages",
                              headers={"Authorization": f"Bearer {key}"})
    assert status == 200
    assert [m["message"] for m in history["messages"]] == ["ping", "Echo: ping"]


def test_web_chat_gets_ack_deltas_and_reply(embedded_stack):
    slug = embedded_stack.demo["channels"]["webchat"]["slug"]
    token = visitor_token(embedded_stack.url, slug)
    ws_url = embedded_stack.url.replace("http", "ws") + f"/ws/chat/{slug}/?visitor={token}"

    async def chat():
        async with websockets.connect(ws_url) as ws:
            await ws.send(json.dumps({"type": "message", "message": "stream me please", "client_id": "c-1"}))
            frames = []
            while not frames or frames[-1]["type"] not in ("reply", "error"):
                frames.append(json.loads(await asyncio.wait_for(ws.recv(), 20)))
            return frames

    frames = asyncio.run(chat())
    assert frames[0]["type"] == "ack" and frames[0]["client_id"] == "c-1"
    deltas = [f["delta"] for f in frames if f["type"] == "delta"]
    assert frames[-1]["type"] == "reply"
    assert "".join(deltas) == frames[-1]["message"] == "Echo: stream me please"
    assert frames[-1]["reply_to"] == frames[0]["message_id"]


def test_health_and_readiness(embedded_stack):
    assert http("GET", f"{embedded_stack.url}/healthz")[0] == 200
    status, body, _ = http("GET", f"{embedded_stack.url}/readyz")
    assert status == 200 and body["checks"] == {"database": "ok"}


SET_API_CHANNEL = "from apps.connectors.models import Channel; c = Channel.objects.get(slug='api'); " \
                  "c.enabled = {enabled}; c.save()"


def test_a_change_made_from_another_shell_reaches_the_running_server(embedded_stack):
    """The embedded default has no Redis: a command run beside `make run` (another process) tells
    the server that the configuration changed through the generation file, so its kept copy of the
    channel is dropped."""
    key = embedded_stack.demo["api_keys"]["customer"]

    def send():
        return http("POST", f"{embedded_stack.url}/api/v1/messages", {"message": "are you there"},
                    {"Authorization": f"Bearer {key}"})

    assert send()[0] == 202  # the server now keeps the API channel
    embedded_stack.stack.manage("shell", "-c", SET_API_CHANNEL.format(enabled=False))
    try:
        status, body, _ = send()
        assert status == 403 and body["error"]["code"] == "channel_disabled", body
    finally:
        embedded_stack.stack.manage("shell", "-c", SET_API_CHANNEL.format(enabled=True))
    assert send()[0] == 202

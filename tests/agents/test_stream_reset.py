"""The web chat's reset frame: pieces streamed by a failed attempt are to be discarded."""
import pytest
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator

from apps.connectors.visitors import visitor_token_issue
from apps.conversations.models import Message
from apps.conversations.realtime import conversation_group
from gateway_project.asgi import application

pytestmark = pytest.mark.django_db(transaction=True)


async def test_reset_event_becomes_a_reset_frame(webchat_channel):
    path = f"/ws/chat/{webchat_channel.slug}/?visitor={visitor_token_issue(webchat_channel)}"
    ws = WebsocketCommunicator(application, path, headers=[(b"host", b"testserver"), (b"origin", b"http://testserver")])
    assert (await ws.connect())[0]
    await ws.send_json_to({"type": "message", "message": "hi"})
    ack = await ws.receive_json_from(timeout=5)
    message = await Message.objects.select_related("channel").aget(pk=ack["message_id"])
    layer = get_channel_layer()
    group = conversation_group(message.conversation_id)
    await layer.group_send(group, {"type": "chat.delta", "reply_to": ack["message_id"], "delta": "Ech"})
    await layer.group_send(group, {"type": "chat.reset", "reply_to": ack["message_id"]})
    assert (await ws.receive_json_from(timeout=5))["type"] == "delta"
    assert await ws.receive_json_from(timeout=5) == {"type": "reset", "reply_to": ack["message_id"]}
    await ws.disconnect()


async def test_a_stream_still_going_after_its_message_was_answered_is_not_shown(webchat_channel):
    """A person answered while the run was streaming: the run's later pieces, and its taking them
    back, do not reach the socket, so the person's answer is the only one on the screen."""
    path = f"/ws/chat/{webchat_channel.slug}/?visitor={visitor_token_issue(webchat_channel)}"
    ws = WebsocketCommunicator(application, path, headers=[(b"host", b"testserver"), (b"origin", b"http://testserver")])
    assert (await ws.connect())[0]
    await ws.send_json_to({"type": "message", "message": "hi"})
    ack = await ws.receive_json_from(timeout=5)
    message = await Message.objects.aget(pk=ack["message_id"])
    layer, group, reply_to = get_channel_layer(), conversation_group(message.conversation_id), ack["message_id"]
    for event in ({"type": "chat.delta", "reply_to": reply_to, "delta": "Ech"},
                  {"type": "chat.reply", "message_id": "m-person", "reply_to": reply_to, "message": "Sam here."},
                  {"type": "chat.delta", "reply_to": reply_to, "delta": "o: hi"},
                  {"type": "chat.reset", "reply_to": reply_to},
                  {"type": "chat.delta", "reply_to": "another-message", "delta": "still shown"}):
        await layer.group_send(group, event)
    frames = [await ws.receive_json_from(timeout=5) for _ in range(3)]
    assert [(f["type"], f.get("delta") or f.get("message")) for f in frames] == [
        ("delta", "Ech"), ("reply", "Sam here."), ("delta", "still shown")]
    assert await ws.receive_nothing(timeout=0.2)
    await ws.disconnect()

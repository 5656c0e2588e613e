"""The web chat consumer logs each message frame (accepted or refused) with its own request id."""
import pytest
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator

from apps.connectors.routing import websocket_urlpatterns
from apps.connectors.visitors import visitor_token_issue
from apps.logs.models import RequestLog
from apps.logs.request_log import request_log_flush


@pytest.mark.django_db(transaction=True)
async def test_frames_are_logged_with_their_outcome(webchat_channel, settings):
    import asyncio

    from asgiref.sync import sync_to_async

    from apps.conversations.realtime import remember_server_loop

    settings.GATEWAY_AGENT_DISPATCH = "thread"  # answered in this process, so the test can wait for it
    remember_server_loop(asyncio.get_running_loop())  # as the ASGI app does
    token = visitor_token_issue(webchat_channel)
    communicator = WebsocketCommunicator(URLRouter(websocket_urlpatterns), f"/ws/chat/web/?visitor={token}")
    connected, _ = await communicator.connect()
    assert connected
    await communicator.send_json_to({"type": "message", "message": "hello"})
    ack = await communicator.receive_json_from(timeout=5)
    assert ack["type"] == "ack"
    while (frame := await communicator.receive_json_from(timeout=10))["type"] != "reply":
        assert frame["type"] == "delta"
    await communicator.send_json_to({"type": "message", "message": ""})
    error = await communicator.receive_json_from(timeout=5)
    assert error["code"] == "invalid_request"
    await communicator.disconnect()

    await sync_to_async(request_log_flush)()
    rows = await sync_to_async(list)(RequestLog.objects.order_by("id").values(
        "status_code", "rejection", "channel_kind", "channel_id", "message_id", "request_id", "user_id"))
    assert [(r["status_code"], r["rejection"]) for r in rows] == [(202, ""), (400, "invalid_request")]
    assert all(r["channel_kind"] == "webchat" and r["channel_id"] == webchat_channel.id for r in rows)
    assert str(rows[0]["message_id"]) == ack["message_id"] and rows[0]["user_id"] is not None
    assert rows[0]["request_id"] and rows[0]["request_id"] != rows[1]["request_id"]


@pytest.mark.django_db(transaction=True)
async def test_a_refused_connection_is_logged(webchat_channel):
    from asgiref.sync import sync_to_async

    communicator = WebsocketCommunicator(URLRouter(websocket_urlpatterns), "/ws/chat/no-such-chat/")
    await communicator.connect()
    frame = await communicator.receive_json_from(timeout=5)
    assert frame["code"] == "not_found"
    await communicator.disconnect()
    await sync_to_async(request_log_flush)()
    row = await sync_to_async(RequestLog.objects.get)()
    assert (row.status_code, row.rejection, row.channel_kind) == (404, "not_found", "webchat")

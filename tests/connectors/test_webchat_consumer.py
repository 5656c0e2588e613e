"""The web chat websocket, driven through the real ASGI application (frames in docs/channels/webchat.md)."""
import uuid

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator

from apps.connectors.visitors import visitor_token_issue
from apps.conversations.models import Conversation, Message
from apps.logs.models import RequestLog
from apps.logs.request_log import request_log_flush
from gateway_project.asgi import application

pytestmark = pytest.mark.django_db(transaction=True)


async def connect(path, origin=None, user=None):
    headers = [(b"host", b"testserver")]
    if origin:
        headers.append((b"origin", origin.encode()))
    communicator = WebsocketCommunicator(application, path, headers=headers)
    if user is not None:
        communicator.scope["user"] = user
    connected, _ = await communicator.connect()
    assert connected
    return communicator


def visitor_path(channel, **params):
    query = "&".join(f"{k}={v}" for k, v in {"visitor": visitor_token_issue(channel), **params}.items())
    return f"/ws/chat/{channel.slug}/?{query}"


async def refused_with(communicator, code):
    frame = await communicator.receive_json_from(timeout=5)
    assert frame["type"] == "error" and frame["code"] == code, frame
    closed = await communicator.receive_output(timeout=5)
    assert closed["type"] == "websocket.close"
    await communicator.disconnect()


async def test_visitor_message_is_acked_and_persisted(webchat_channel):
    ws = await connect(visitor_path(webchat_channel), origin="http://testserver")
    await ws.send_json_to({"type": "message", "message": "hi", "client_id": "c-1"})
    ack = await ws.receive_json_from(timeout=5)
    assert ack["type"] == "ack" and ack["client_id"] == "c-1" and ack["duplicate"] is False
    message = await Message.objects.select_related("sender").aget(pk=ack["message_id"])
    assert message.text == "hi" and message.sender.is_visitor
    assert str(message.conversation_id) == ack["conversation_id"]
    await ws.send_json_to({"type": "message", "message": "hi", "client_id": "c-1"})
    again = await ws.receive_json_from(timeout=5)
    assert again["duplicate"] is True and again["message_id"] == ack["message_id"]
    await ws.disconnect()


async def test_logged_in_session_is_that_user(webchat_channel, employee):
    ws = await connect(f"/ws/chat/{webchat_channel.slug}/", user=employee)
    await ws.send_json_to({"type": "message", "message": "as staff"})
    ack = await ws.receive_json_from(timeout=5)
    message = await Message.objects.aget(pk=ack["message_id"])
    assert message.sender_id == employee.pk
    await ws.disconnect()


async def next_answer(ws):
    """The next ack or error frame (the agent run's frames for earlier messages skipped)."""
    while True:
        frame = await ws.receive_json_from(timeout=5)
        if frame["type"] in ("ack", "error"):
            return frame


async def test_a_visitor_blocked_while_its_socket_is_open_is_refused_on_it(webchat_channel, admin_user):
    from apps.identities.services import user_block

    ws = await connect(visitor_path(webchat_channel), origin="http://testserver")
    await ws.send_json_to({"type": "message", "message": "hi", "client_id": "c-1"})
    ack = await next_answer(ws)
    sender = (await Message.objects.select_related("sender").aget(pk=ack["message_id"])).sender
    await sync_to_async(user_block)(user=sender, actor=admin_user, reason="abuse")
    await ws.send_json_to({"type": "message", "message": "after the block", "client_id": "c-2"})
    frame = await next_answer(ws)
    assert frame["type"] == "error" and frame["code"] == "blocked" and frame["client_id"] == "c-2", frame
    assert not await Message.objects.filter(text="after the block").aexists()
    await ws.disconnect()


async def test_a_session_user_deactivated_while_the_socket_is_open_is_refused_on_it(webchat_channel, employee):
    ws = await connect(f"/ws/chat/{webchat_channel.slug}/", user=employee)
    await ws.send_json_to({"type": "message", "message": "as staff"})
    assert (await next_answer(ws))["type"] == "ack"
    row = await employee.__class__.objects.aget(pk=employee.pk)  # another copy: as the admin saves it
    row.is_active = False
    await row.asave()
    await ws.send_json_to({"type": "message", "message": "after the deactivation"})
    frame = await next_answer(ws)
    assert frame["type"] == "error" and frame["code"] == "forbidden", frame
    assert not await Message.objects.filter(text="after the deactivation").aexists()
    await ws.disconnect()


async def test_a_session_signed_out_while_the_socket_is_open_is_refused_on_it(webchat_channel, employee):
    from django.conf import settings
    from django.test import Client

    browser = Client()
    await sync_to_async(browser.force_login)(employee)
    cookie = f"{settings.SESSION_COOKIE_NAME}={browser.cookies[settings.SESSION_COOKIE_NAME].value}"
    ws = WebsocketCommunicator(application, f"/ws/chat/{webchat_channel.slug}/", headers=[
        (b"host", b"testserver"), (b"origin", b"http://testserver"), (b"cookie", cookie.encode())])
    assert (await ws.connect())[0]
    await ws.send_json_to({"type": "message", "message": "signed in"})
    assert (await next_answer(ws))["type"] == "ack"
    await sync_to_async(browser.logout)()
    await ws.send_json_to({"type": "message", "message": "after signing out"})
    frame = await next_answer(ws)
    assert frame["type"] == "error" and frame["code"] == "unauthenticated", frame
    assert not await Message.objects.filter(text="after signing out").aexists()
    await ws.disconnect()


async def test_no_identity_is_refused(webchat_channel):
    await refused_with(await connect(f"/ws/chat/{webchat_channel.slug}/"), "unauthenticated")


async def test_forged_visitor_token_is_refused(webchat_channel):
    path = f"/ws/chat/{webchat_channel.slug}/?visitor=" + visitor_token_issue(webchat_channel)[:-3] + "abc"
    await refused_with(await connect(path), "unauthenticated")


async def test_token_of_another_chat_is_refused(webchat_channel):
    from apps.connectors.models import Channel

    other = await Channel.objects.acreate(slug="other", name="Other", kind="webchat")
    path = f"/ws/chat/{webchat_channel.slug}/?visitor={visitor_token_issue(other)}"
    await refused_with(await connect(path), "unauthenticated")


async def test_visitors_refused_where_the_channel_wants_sign_in(webchat_channel):
    webchat_channel.allow_visitors = False
    await webchat_channel.asave()
    await refused_with(await connect(visitor_path(webchat_channel)), "forbidden")


async def test_foreign_origin_is_refused(webchat_channel):
    await refused_with(await connect(visitor_path(webchat_channel), origin="https://evil.example"), "forbidden")


async def test_listed_origin_is_allowed(webchat_channel):
    webchat_channel.allowed_origins = ["https://shop.example"]
    await webchat_channel.asave()
    ws = await connect(visitor_path(webchat_channel), origin="https://shop.example")
    await ws.send_json_to({"type": "message", "message": "hello"})
    assert (await ws.receive_json_from(timeout=5))["type"] == "ack"
    await ws.disconnect()


async def test_an_embedding_site_never_speaks_for_the_gateway_session(webchat_channel, employee):
    """A listed site same-site with the gateway gets the browser's gateway session on the socket:
    it still speaks as a visitor (its token), and without a token it is refused; the gateway's own
    page speaks as the signed-in user."""
    webchat_channel.allowed_origins = ["https://shop.example"]
    await webchat_channel.asave()
    ws = await connect(visitor_path(webchat_channel), origin="https://shop.example", user=employee)
    await ws.send_json_to({"type": "message", "message": "from the shop's page"})
    message = await Message.objects.select_related("sender").aget(pk=(await ws.receive_json_from(timeout=5))[
        "message_id"])
    assert message.sender_id != employee.pk and message.sender.is_visitor
    await ws.disconnect()
    no_token = await connect(f"/ws/chat/{webchat_channel.slug}/", origin="https://shop.example", user=employee)
    await refused_with(no_token, "unauthenticated")
    own = await connect(f"/ws/chat/{webchat_channel.slug}/", origin="http://testserver", user=employee)
    await own.send_json_to({"type": "message", "message": "from the gateway's page"})
    assert (await Message.objects.aget(pk=(await own.receive_json_from(timeout=5))["message_id"])).sender_id == (
        employee.pk)
    await own.disconnect()


async def test_unknown_and_disabled_chats_are_refused(webchat_channel):
    await refused_with(await connect("/ws/chat/nope/"), "not_found")
    webchat_channel.enabled = False
    await webchat_channel.asave()
    await refused_with(await connect(visitor_path(webchat_channel)), "not_found")


async def test_another_users_conversation_is_refused(webchat_channel, customer):
    theirs = await Conversation.objects.acreate(channel=webchat_channel, user=customer)
    await refused_with(await connect(visitor_path(webchat_channel, conversation=theirs.pk)), "not_found")
    await refused_with(await connect(visitor_path(webchat_channel, conversation="not-a-uuid")), "not_found")
    await refused_with(await connect(visitor_path(webchat_channel, conversation=uuid.uuid4())), "not_found")


@pytest.mark.parametrize("frame", [
    {"type": "message"}, {"type": "message", "message": ""}, {"type": "message", "message": 5},
    {"type": "hello"}, ["message"], {"type": "message", "message": "x", "client_id": 7},
    {"type": "message", "message": "x" * 8001},
])
async def test_bad_frames_get_an_error_frame_and_the_socket_stays(webchat_channel, frame):
    ws = await connect(visitor_path(webchat_channel))
    await ws.send_json_to(frame)
    error = await ws.receive_json_from(timeout=5)
    assert error["type"] == "error" and error["code"] == "invalid_request"
    await ws.send_to(text_data="{not json")
    assert (await ws.receive_json_from(timeout=5))["code"] == "invalid_request"
    await ws.send_json_to({"type": "message", "message": "still here"})
    assert (await ws.receive_json_from(timeout=5))["type"] == "ack"
    await ws.disconnect()
    assert await Message.objects.acount() == 1


async def test_rate_limit_is_an_error_frame_with_retry_after(webchat_channel, settings):
    settings.GATEWAY_USER_RATE = "1/m"
    ws = await connect(visitor_path(webchat_channel))
    await ws.send_json_to({"type": "message", "message": "one"})
    assert (await ws.receive_json_from(timeout=5))["type"] == "ack"
    await ws.send_json_to({"type": "message", "message": "two", "client_id": "c-2"})
    error = await ws.receive_json_from(timeout=5)
    assert error["code"] == "rate_limited" and error["retry_after"] >= 1 and error["client_id"] == "c-2"
    await ws.disconnect()


async def test_a_resent_client_id_counts_against_the_rate(webchat_channel, settings):
    """A repeat is acknowledged as a duplicate, but it is a request all the same: past the rate,
    an error frame (before, a client could resend one client_id as fast as it liked)."""
    settings.GATEWAY_USER_RATE = "2/m"
    ws = await connect(visitor_path(webchat_channel))
    frames = []
    for _ in range(3):
        await ws.send_json_to({"type": "message", "message": "one", "client_id": "c-1"})
        frames.append(await ws.receive_json_from(timeout=5))
    assert [f["type"] for f in frames] == ["ack", "ack", "error"]
    assert frames[1]["duplicate"] is True and frames[2]["code"] == "rate_limited"
    await ws.disconnect()
    assert await Message.objects.acount() == 1


async def test_reconnecting_to_a_conversation_replays_its_history(webchat_channel):
    token = visitor_token_issue(webchat_channel)
    ws = await connect(f"/ws/chat/{webchat_channel.slug}/?visitor={token}")
    await ws.send_json_to({"type": "message", "message": "remember me"})
    ack = await ws.receive_json_from(timeout=5)
    await ws.disconnect()
    ws = await connect(f"/ws/chat/{webchat_channel.slug}/?visitor={token}&conversation={ack['conversation_id']}")
    history = await ws.receive_json_from(timeout=5)
    assert history["type"] == "history" and history["conversation_id"] == ack["conversation_id"]
    assert [(m["direction"], m["message"]) for m in history["messages"]] == [("in", "remember me")]
    await ws.disconnect()


@pytest.mark.parametrize("frame", [
    {"type": "message", "message": "a\u0000b"}, {"type": "message", "message": "\ud800"},
    {"type": "message", "message": "hi", "client_id": "c\u0000"},
    {"type": "message", "message": "hi", "client_id": "\udfff"},
])
async def test_text_that_cannot_be_stored_is_refused_before_anything_is_made(webchat_channel, frame):
    ws = await connect(visitor_path(webchat_channel))
    await ws.send_json_to(frame)
    error = await ws.receive_json_from(timeout=5)
    assert error["type"] == "error" and error["code"] == "invalid_request"
    assert not await Conversation.objects.aexists()  # no conversation opened, no visitor made
    await ws.send_json_to({"type": "message", "message": "still here"})
    assert (await ws.receive_json_from(timeout=5))["type"] == "ack"
    await ws.disconnect()


FAIL_ON_INSERT = {  # the database refuses one message: a failure that is neither the client's nor an outage
    "sqlite": ["CREATE TRIGGER fail_boom BEFORE INSERT ON conversations_message WHEN NEW.text = 'boom' "
               "BEGIN SELECT RAISE(ABORT, 'refused by trigger'); END"],
    "postgresql": ["CREATE FUNCTION fail_boom() RETURNS trigger AS $$ BEGIN IF NEW.text = 'boom' THEN "
                   "RAISE EXCEPTION 'refused by trigger'; END IF; RETURN NEW; END $$ LANGUAGE plpgsql",
                   "CREATE TRIGGER fail_boom BEFORE INSERT ON conversations_message FOR EACH ROW "
                   "EXECUTE FUNCTION fail_boom()"],
}


async def test_an_unexpected_failure_is_an_internal_error_frame_and_the_socket_stays(webchat_channel, caplog):
    from asgiref.sync import sync_to_async
    from django.db import connection

    @sync_to_async
    def fail_on_boom():
        with connection.cursor() as cursor:
            for statement in FAIL_ON_INSERT[connection.vendor]:
                cursor.execute(statement)

    await fail_on_boom()
    ws = await connect(visitor_path(webchat_channel))
    await ws.send_json_to({"type": "message", "message": "boom", "client_id": "c-boom"})
    error = await ws.receive_json_from(timeout=5)
    assert error == {"type": "error", "code": "internal_error",
                     "message": "Something went wrong on our side; please try again.", "client_id": "c-boom"}
    await ws.send_json_to({"type": "message", "message": "still here"})
    assert (await ws.receive_json_from(timeout=5))["type"] == "ack"
    await ws.disconnect()
    failed = [r for r in caplog.records if r.getMessage() == "web chat frame failed"]
    assert failed and "refused by trigger" in str(failed[0].exc_info[1])


@pytest.mark.parametrize("path", ["/ws/nope/", "/ws/chat/", "/ws/chat/a b/", "/"])
async def test_a_socket_on_another_path_is_refused_not_a_server_error(path):
    communicator = WebsocketCommunicator(application, path, headers=[(b"host", b"testserver")])
    connected, _ = await communicator.connect()
    assert not connected
    await communicator.disconnect()


async def test_behind_a_trusted_proxy_the_logs_name_the_client_not_the_proxy(webchat_channel, settings):
    """The request log's row for each frame carries the address the IP rules use: the client that
    the trusted proxy names in X-Forwarded-For, not the proxy itself."""
    settings.GATEWAY_TRUSTED_PROXIES = ["127.0.0.1"]
    communicator = WebsocketCommunicator(application, visitor_path(webchat_channel),
                                         headers=[(b"host", b"testserver"), (b"x-forwarded-for", b"203.0.113.5")])
    communicator.scope["client"] = ["127.0.0.1", 50000]
    connected, _ = await communicator.connect()
    assert connected
    await communicator.send_json_to({"type": "message", "message": "from behind a proxy", "client_id": "p-1"})
    ack = await communicator.receive_json_from(timeout=5)
    assert ack["type"] == "ack"
    await communicator.disconnect()
    await sync_to_async(request_log_flush)()
    rows = RequestLog.objects.filter(message_id=ack["message_id"]).values_list("client_ip", flat=True)
    assert [ip async for ip in rows] == ["203.0.113.5"]

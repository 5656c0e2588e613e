"""The staff handoff inbox (/console/): a customer asks for a person, the conversation waits in
the inbox (live over /ws/console/), staff take it, reply on the customer's channel, hand it back;
only channels the staff member may see; every step audited."""
import pytest
from asgiref.sync import async_to_sync, sync_to_async
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.contrib.auth.models import Permission
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from apps.agents.claims import WaitingForEarlier
from apps.agents.runtime import agent_run
from apps.connectors.models import Channel
from apps.conversations.models import Message
from apps.conversations.realtime import conversation_group
from apps.identities.roles import Role
from apps.logs.models import AuditEvent, LLMCall, RequestLog
from apps.routing.models import Handoff
from apps.routing.services import INBOX_GROUP
from tests.helpers import Listener, send


@pytest.fixture
def staff(admin_user):
    admin_user.is_superuser = True
    admin_user.save()
    return admin_user


@pytest.fixture
def limited_staff(make_user):
    """Staff who may change conversations, but only of channels their role (employee) may use."""
    user = make_user(Role.EMPLOYEE, is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="change_conversation"))
    return user


def ask_for_a_person(channel, customer, fake_llm):
    first = send(channel, customer, "hello bot")
    agent_run(first.id)
    asking = send(channel, customer, "Talk to a human!", conversation_id=str(first.conversation_id))
    before = fake_llm.stats()["requests"]
    assert agent_run(asking.id) is None  # the agent stays quiet
    assert fake_llm.stats()["requests"] == before
    return asking


@pytest.mark.django_db
class TestInbox:
    def test_a_request_waits_in_the_inbox_and_is_announced(self, client, staff, webchat_channel, customer, fake_llm,
                                                           django_capture_on_commit_callbacks):
        listener = Listener(INBOX_GROUP)
        with django_capture_on_commit_callbacks(execute=True):  # published once the run commits
            asking = ask_for_a_person(webchat_channel, customer, fake_llm)
        handoff = Handoff.objects.get(conversation_id=asking.conversation_id, ended_at__isnull=True)
        assert handoff.staff is None
        events = listener.drain()
        assert {"type": "inbox.changed", "kind": "message", "conversation_id": str(asking.conversation_id),
                "channel_id": webchat_channel.pk} in events
        assert AuditEvent.objects.filter(action="handoff.requested", actor=customer).count() == 1
        client.force_login(staff)
        page = client.get("/console/").content.decode()
        assert f'data-conversation="{asking.conversation_id}"' in page and "Talk to a human!" in page
        assert "waiting" in client.get("/console/list/").content.decode()

    def test_newest_first(self, client, staff, webchat_channel, make_user, fake_llm):
        older = ask_for_a_person(webchat_channel, make_user(Role.CUSTOMER), fake_llm)
        newer = ask_for_a_person(webchat_channel, make_user(Role.CUSTOMER), fake_llm)
        client.force_login(staff)
        items = client.get("/console/list/").context["items"]
        assert [str(i["conversation"].pk) for i in items] == [str(newer.conversation_id), str(older.conversation_id)]

    def test_take_reply_and_hand_back_from_the_console(self, client, staff, webchat_channel, customer, fake_llm):
        asking = ask_for_a_person(webchat_channel, customer, fake_llm)
        conversation_id = asking.conversation_id
        client.force_login(staff)
        base = f"/console/c/{conversation_id}/"
        assert client.post(base + "take/").status_code == 302
        assert Handoff.objects.get(conversation_id=conversation_id, ended_at__isnull=True).staff == staff

        chat = Listener(conversation_group(conversation_id))
        client.post(base + "reply/", {"text": "Hi, Sam from support."})
        reply = Message.objects.get(reply_to=asking)
        assert reply.sender == staff and reply.status == "sent"
        events = chat.drain()
        assert [e["type"] for e in events] == ["chat.reply"] and events[0]["message"] == "Hi, Sam from support."
        transcript = client.get(base + "transcript/").content.decode()
        assert "Talk to a human!" in transcript and "Hi, Sam from support." in transcript

        assert client.post(base + "handback/").status_code == 302
        assert not Handoff.objects.filter(conversation_id=conversation_id, ended_at__isnull=True).exists()
        actions = list(AuditEvent.objects.filter(target_id=str(conversation_id)).order_by("created_at")
                       .values_list("action", flat=True))
        assert actions == ["handoff.requested", "handoff.started", "handoff.replied", "handoff.ended"]

    def test_a_reply_that_cannot_be_stored_is_refused_not_a_server_error(self, client, staff, webchat_channel,
                                                                         customer, fake_llm):
        asking = ask_for_a_person(webchat_channel, customer, fake_llm)
        client.force_login(staff)
        base = f"/console/c/{asking.conversation_id}/"
        assert client.post(base + "take/").status_code == 302
        for url in (base + "reply/", f"/admin/conversations/conversation/{asking.conversation_id}/handoff/reply/"):
            for text, told in (("nul\x00here", "cannot be stored"), ("x" * 8001, "longer than 8000 characters")):
                response = client.post(url, {"text": text}, follow=True)
                assert response.status_code == 200
                assert told in response.content.decode()
        assert not Message.objects.filter(reply_to=asking).exists()

    def test_a_deleted_staff_members_reply_stays_theirs_in_the_transcript(self, client, staff, make_user,
                                                                          webchat_channel, customer, fake_llm):
        from apps.routing.services import handoff_reply, handoff_start

        other = make_user(None)
        other.is_staff = other.is_superuser = True
        other.save()
        asking = ask_for_a_person(webchat_channel, customer, fake_llm)
        handoff_start(conversation=asking.conversation, staff=other)
        handoff_reply(conversation=asking.conversation, staff=other, text="Sam here.")
        other.delete()
        client.force_login(staff)
        transcript = client.get(f"/console/c/{asking.conversation_id}/transcript/").content.decode()
        sam = transcript[transcript.rindex('<li class="msg', 0, transcript.index("Sam here.")):]
        assert sam.startswith('<li class="msg staff">') and "(deleted user)" in sam

    def test_another_staff_member_cannot_take_a_taken_conversation(
            self, client, staff, make_user, webchat_channel, customer, fake_llm):
        asking = ask_for_a_person(webchat_channel, customer, fake_llm)
        client.force_login(staff)
        client.post(f"/console/c/{asking.conversation_id}/take/")
        other = make_user(Role.ADMIN, is_staff=True, is_superuser=True)
        other_client = Client()
        other_client.force_login(other)
        other_client.post(f"/console/c/{asking.conversation_id}/take/")
        other_client.post(f"/console/c/{asking.conversation_id}/reply/", {"text": "me too"})
        assert Handoff.objects.get(conversation_id=asking.conversation_id, ended_at__isnull=True).staff == staff
        assert not Message.objects.filter(reply_to=asking).exists()

    def test_only_channels_the_staff_member_may_see(self, client, limited_staff, agent, make_user, fake_llm):
        hidden = Channel.objects.create(slug="vip", name="VIP", kind="webchat", default_agent=agent,
                                        visibility="admin")
        asking = ask_for_a_person(hidden, make_user(Role.ADMIN), fake_llm)
        client.force_login(limited_staff)
        assert client.get("/console/").status_code == 200
        assert client.get("/console/list/").context["items"] == []
        assert client.get(f"/console/c/{asking.conversation_id}/").status_code == 404
        assert client.post(f"/console/c/{asking.conversation_id}/take/").status_code == 404
        assert not AuditEvent.objects.filter(action="handoff.started").exists()

    def test_the_admin_hides_them_as_the_console_does(self, client, limited_staff, agent, make_user, fake_llm,
                                                        webchat_channel, customer):
        """The same staff member in the admin: conversations and messages of channels they may not
        use are not listed, not found, and cannot be taken over or answered there either."""
        limited_staff.user_permissions.add(*Permission.objects.filter(
            codename__in=["view_conversation", "view_message", "change_message", "view_llmcall", "view_dashboard"]))
        hidden = Channel.objects.create(slug="vip", name="VIP", kind="webchat", default_agent=agent,
                                        visibility="admin")
        asking = ask_for_a_person(hidden, make_user(Role.ADMIN), fake_llm)
        shown = ask_for_a_person(webchat_channel, customer, fake_llm)
        client.force_login(limited_staff)
        base = "/admin/conversations"
        listed = client.get(f"{base}/conversation/").context["cl"].result_list
        assert [c.pk for c in listed] == [shown.conversation_id]
        assert {m.channel_id for m in client.get(f"{base}/message/").context["cl"].result_list} == {
            webchat_channel.pk}
        hidden_page = client.get(f"{base}/conversation/{asking.conversation_id}/change/")
        assert hidden_page.status_code == 302 and "VIP" not in hidden_page.content.decode()  # "does not exist"
        assert client.get(f"{base}/message/{asking.pk}/change/").status_code == 302
        # Nor the model calls made there, nor the dashboard's transcripts.
        hidden_call = LLMCall.objects.get(conversation_id=asking.conversation_id)
        assert hidden_call not in client.get("/admin/logs/llmcall/").context["cl"].result_list
        assert client.get(f"/admin/logs/llmcall/{hidden_call.pk}/change/").status_code == 302
        found = client.get("/dashboard/conversations/", {"text": "hello bot"}).context["tables"][0].rows
        assert [row["id"] for row in found] == [str(shown.conversation_id)]
        assert client.get(f"/dashboard/conversations/{asking.conversation_id}/").status_code == 404
        assert client.get(f"/dashboard/conversations/{shown.conversation_id}/").status_code == 200
        for action in ("start", "reply", "end"):
            response = client.post(f"{base}/conversation/{asking.conversation_id}/handoff/{action}/", {"text": "hi"})
            assert response.status_code == 404
        assert Handoff.objects.get(conversation_id=asking.conversation_id, ended_at__isnull=True).staff is None
        assert not Message.objects.filter(reply_to=asking).exists()
        # A channel they may use works as before.
        assert client.get(f"{base}/conversation/{shown.conversation_id}/change/").status_code == 200
        client.post(f"{base}/conversation/{shown.conversation_id}/handoff/start/")
        assert Handoff.objects.get(conversation_id=shown.conversation_id, ended_at__isnull=True).staff == limited_staff

    def test_nor_the_errors_of_their_model_calls_on_the_dashboard(self, client, limited_staff, staff, agent,
                                                                  webchat_channel):
        limited_staff.user_permissions.add(Permission.objects.get(codename="view_dashboard"))
        hidden = Channel.objects.create(slug="vip", name="VIP", kind="webchat", default_agent=agent,
                                        visibility="admin")
        for channel in (hidden, webchat_channel):
            LLMCall.objects.create(channel=channel, model="m", provider="p", status=LLMCall.Status.ERROR,
                                   error=f"refused on {channel.slug}")

        def errors_listed(user):
            client.force_login(user)
            tables = {t.name: t for t in client.get("/dashboard/errors/").context["tables"]}
            exported = client.get("/dashboard/errors/", {"export": "failed_calls"}).content.decode()
            return sorted(row["error"] for row in tables["failed_calls"].rows), exported

        listed, exported = errors_listed(limited_staff)
        assert listed == ["refused on web"] and "refused on vip" not in exported
        assert errors_listed(staff)[0] == ["refused on vip", "refused on web"]

    def test_nor_their_refused_requests_nor_the_audit_log_on_the_errors_page(
            self, client, limited_staff, staff, agent, webchat_channel, make_user):
        """The errors page lists refused requests as the admin does (channels the staff member may
        use, and refusals before any channel was known), and its audit log only to staff who may
        read audit events."""
        limited_staff.user_permissions.add(Permission.objects.get(codename="view_dashboard"))
        hidden = Channel.objects.create(slug="vip", name="VIP", kind="webchat", default_agent=agent,
                                        visibility="admin")
        for channel, ip in ((hidden, "192.0.2.1"), (webchat_channel, "192.0.2.2"), (None, "192.0.2.3")):
            RequestLog.objects.create(channel=channel, channel_kind="webchat", status_code=429,
                                      rejection="rate_limited", client_ip=ip)
        AuditEvent.objects.create(action="apikey.revoked", actor=make_user(Role.ADMIN), after={"key": "vip's"})

        def errors_page(user):
            client.force_login(user)
            page = client.get("/dashboard/errors/")
            tables = {t.name: t for t in page.context["tables"]}
            return page, tables, client.get("/dashboard/errors/", {"export": "refused_requests"}).content.decode()

        page, tables, exported = errors_page(limited_staff)
        assert sorted(r["client_ip"] for r in tables["refused_requests"].rows) == ["192.0.2.2", "192.0.2.3"]
        assert "192.0.2.1" not in exported and "192.0.2.2" in exported
        assert "audit" not in tables and "apikey.revoked" not in page.content.decode()
        assert client.get("/dashboard/errors/", {"export": "audit"}).status_code == 400
        page, tables, _ = errors_page(staff)  # a superuser
        assert len(tables["refused_requests"].rows) == 3
        assert [r["action"] for r in tables["audit"].rows] == ["apikey.revoked"]
        limited_staff.user_permissions.add(Permission.objects.get(codename="view_auditevent"))
        assert "audit" in errors_page(limited_staff)[1]

    def test_nor_through_the_request_log_or_a_deletion_that_would_take_them_along(
            self, client, limited_staff, agent, make_user, fake_llm):
        """A customer spoke on a channel since closed to the staff member's role: its request-log
        row does not show the message, and deleting the customer (which would delete it) is refused
        without listing it. A non-UUID conversation address is "not found", not a 500."""
        from apps.logs.models import RequestLog

        limited_staff.user_permissions.add(*Permission.objects.filter(codename__in=[
            "view_requestlog", "view_message", "view_user", "delete_user", "delete_conversation",
            "delete_message", "delete_channelidentity", "delete_llmcall", "delete_toolcall", "delete_handoff",
            "delete_usagedaily", "view_conversation"]))
        vip = Channel.objects.create(slug="vip", name="VIP", kind="webchat", default_agent=agent)
        speaker = make_user(Role.CUSTOMER)
        said = send(vip, speaker, "SECRET-BOARD-MINUTES fire the CFO")
        agent_run(said.id)
        vip.visibility = "admin"
        vip.save()
        logged = RequestLog.objects.create(channel=vip, channel_kind="webchat", status_code=202, message=said)
        client.force_login(limited_staff)
        assert client.get(f"/admin/logs/requestlog/{logged.pk}/change/").status_code == 302
        assert logged not in client.get("/admin/logs/requestlog/").context["cl"].result_list
        confirm = client.get(f"/admin/identities/user/{speaker.pk}/delete/")
        assert "SECRET-BOARD" not in confirm.content.decode() and confirm.context["perms_lacking"]
        assert client.post(f"/admin/identities/user/{speaker.pk}/delete/", {"post": "yes"}).status_code == 403
        assert Message.objects.filter(pk=said.pk).exists()
        assert client.get("/admin/conversations/conversation/not-a-uuid/change/").status_code == 302

    def test_a_user_whose_messages_are_all_on_usable_channels_is_deleted_in_a_few_queries(
            self, client, limited_staff, webchat_channel, make_user):
        """The deletion asks, per row it takes along, whether the staff member may delete it: read
        from the row, so the confirmation costs the same however many messages there are."""
        limited_staff.user_permissions.add(*Permission.objects.filter(codename__in=[
            "view_user", "delete_user", "delete_conversation", "delete_message", "delete_channelidentity",
            "delete_llmcall", "delete_handoff", "delete_usagedaily"]))
        client.force_login(limited_staff)
        counts = []
        for said in (3, 40):
            speaker = make_user(Role.CUSTOMER)
            first = send(webchat_channel, speaker, "hello 0")
            for i in range(1, said):
                send(webchat_channel, speaker, f"hello {i}", conversation_id=str(first.conversation_id))
            client.get(f"/admin/identities/user/{speaker.pk}/delete/")  # the first read of the session
            with CaptureQueriesContext(connection) as queries:
                confirm = client.get(f"/admin/identities/user/{speaker.pk}/delete/")
            assert confirm.status_code == 200 and not confirm.context["perms_lacking"]
            counts.append(len(queries))
            assert client.post(f"/admin/identities/user/{speaker.pk}/delete/", {"post": "yes"}).status_code == 302
            assert not Message.objects.filter(conversation_id=first.conversation_id).exists()
        assert counts[0] == counts[1], counts

    def test_the_admin_reads_the_channels_in_a_few_queries_however_many(self, client, limited_staff, agent):
        limited_staff.user_permissions.add(Permission.objects.get(codename="view_message"))
        client.force_login(limited_staff)
        client.get("/admin/conversations/message/")  # the session's and the permissions' first reads
        counts = []
        for hidden in (1, 60):
            Channel.objects.bulk_create(Channel(slug=f"vip-{len(counts)}-{i}", name="VIP", kind="webchat",
                                                default_agent=agent, visibility="admin") for i in range(hidden))
            with CaptureQueriesContext(connection) as queries:
                assert client.get("/admin/conversations/message/").status_code == 200
            counts.append(len(queries))
        assert counts[0] == counts[1], counts

    def test_a_message_goes_only_with_its_conversation_or_its_sender(self, client, make_user, webchat_channel,
                                                                     customer, fake_llm):
        """One message cannot be deleted in the admin (a deleted reply would leave its message
        answered by nothing); deleting its conversation, or its sender, takes it along."""
        root = make_user(None, is_staff=True, is_superuser=True)
        client.force_login(root)
        asked = send(webchat_channel, customer, "hello")
        agent_run(asked.id)
        reply = Message.objects.get(reply_to=asked)
        assert client.post(f"/admin/conversations/message/{reply.pk}/delete/", {"post": "yes"}).status_code == 403
        assert "delete_selected" not in client.get("/admin/conversations/message/").context["action_form"].fields[
            "action"].choices.__repr__()
        assert "deletelink" not in client.get(f"/admin/conversations/message/{reply.pk}/change/").content.decode()
        assert client.post(f"/admin/conversations/conversation/{asked.conversation_id}/delete/",
                           {"post": "yes"}).status_code == 302
        assert not Message.objects.filter(pk__in=[asked.pk, reply.pk]).exists()
        again = send(webchat_channel, customer, "hello again")
        agent_run(again.id)
        assert client.post(f"/admin/identities/user/{customer.pk}/delete/", {"post": "yes"}).status_code == 302
        assert not Message.objects.filter(pk=again.pk).exists()

    def test_customers_and_anonymous_are_kept_out(self, client, customer):
        assert client.get("/console/").status_code == 302  # to the login page
        client.force_login(customer)
        assert client.get("/console/").status_code == 403


def session_cookie(user) -> bytes:
    client = Client()
    client.force_login(user)
    return f"{settings.SESSION_COOKIE_NAME}={client.cookies[settings.SESSION_COOKIE_NAME].value}".encode()


async def open_inbox(user, origin=b"http://testserver"):
    from gateway_project.asgi import application

    headers = [(b"host", b"testserver"), (b"origin", origin)]
    if user is not None:
        headers.append((b"cookie", await sync_to_async(session_cookie)(user)))
    communicator = WebsocketCommunicator(application, "/ws/console/", headers=headers)
    connected, code = await communicator.connect()
    return communicator, connected, code


@pytest.mark.django_db(transaction=True)
class TestInboxSocket:
    def test_staff_hear_changes_of_channels_they_may_see(self, staff, limited_staff, webchat_channel, agent):
        hidden = Channel.objects.create(slug="vip", name="VIP", kind="webchat", default_agent=agent,
                                        visibility="admin")
        from channels.layers import get_channel_layer

        async def scenario():
            admin_socket, ok, _ = await open_inbox(staff)
            limited_socket, ok2, _ = await open_inbox(limited_staff)
            assert ok and ok2
            layer = get_channel_layer()
            for channel in (hidden, webchat_channel):
                await layer.group_send(INBOX_GROUP, {"type": "inbox.changed", "kind": "message",
                                                     "conversation_id": f"c-{channel.slug}", "channel_id": channel.pk})
            seen = [(await admin_socket.receive_json_from(timeout=5))["conversation_id"] for _ in range(2)]
            assert seen == ["c-vip", "c-web"]
            assert (await limited_socket.receive_json_from(timeout=5))["conversation_id"] == "c-web"
            assert await limited_socket.receive_nothing(timeout=0.3)
            await admin_socket.disconnect()
            await limited_socket.disconnect()

        async_to_sync(scenario)()

    def test_an_open_socket_follows_its_staff_member_losing_access(self, limited_staff, webchat_channel, monkeypatch):
        """Checked again before a frame (every time here): a channel taken away stops its frames,
        and a deactivated staff member's socket is closed."""
        from channels.layers import get_channel_layer

        from apps.routing import console_consumer

        event = {"type": "inbox.changed", "kind": "message", "conversation_id": "c-web",
                 "channel_id": webchat_channel.pk}

        async def scenario():
            socket, ok, _ = await open_inbox(limited_staff)
            assert ok
            monkeypatch.setattr(console_consumer, "RECHECK_SECONDS", 0.0)
            layer = get_channel_layer()
            await layer.group_send(INBOX_GROUP, event)
            assert (await socket.receive_json_from(timeout=5))["conversation_id"] == "c-web"
            webchat_channel.visibility = "admin"
            await sync_to_async(webchat_channel.save)()
            await layer.group_send(INBOX_GROUP, event)
            assert await socket.receive_nothing(timeout=0.3)
            limited_staff.is_active = False
            await sync_to_async(limited_staff.save)()
            await layer.group_send(INBOX_GROUP, event)
            assert await socket.receive_output(timeout=5) == {"type": "websocket.close", "code": 4403}
            await socket.disconnect()

        async_to_sync(scenario)()

    def test_an_open_socket_closes_once_its_session_is_signed_out(self, staff, webchat_channel, monkeypatch):
        from channels.layers import get_channel_layer
        from django.contrib.sessions.models import Session

        from apps.routing import console_consumer

        event = {"type": "inbox.changed", "kind": "message", "conversation_id": "c-web",
                 "channel_id": webchat_channel.pk}

        async def scenario():
            socket, ok, _ = await open_inbox(staff)
            assert ok
            layer = get_channel_layer()
            await layer.group_send(INBOX_GROUP, event)  # within RECHECK_SECONDS of the connect: no check
            assert (await socket.receive_json_from(timeout=5))["conversation_id"] == "c-web"
            await sync_to_async(Session.objects.all().delete)()  # signed out everywhere
            monkeypatch.setattr(console_consumer, "RECHECK_SECONDS", 0.0)
            await layer.group_send(INBOX_GROUP, event)
            assert await socket.receive_output(timeout=5) == {"type": "websocket.close", "code": 4403}
            await socket.disconnect()

        async_to_sync(scenario)()

    def test_a_client_frame_is_ignored_whatever_it_holds(self, staff, webchat_channel):
        """The inbox only listens: bad JSON, a binary or a deeply nested frame neither fails the
        consumer (a server error, the socket closed with 1011) nor stops its frames."""
        from channels.layers import get_channel_layer

        async def scenario():
            socket, ok, _ = await open_inbox(staff)
            assert ok
            await socket.send_to(text_data="not json")
            await socket.send_to(bytes_data=b"\x00binary")
            await socket.send_to(text_data="[" * 100_000 + "]" * 100_000)
            await socket.send_json_to({"type": "changed", "conversation_id": "c-other"})
            await get_channel_layer().group_send(INBOX_GROUP, {
                "type": "inbox.changed", "kind": "message", "conversation_id": "c-web",
                "channel_id": webchat_channel.pk})
            assert (await socket.receive_json_from(timeout=5))["conversation_id"] == "c-web"
            await socket.disconnect()

        async_to_sync(scenario)()

    def test_refused_to_customers_anonymous_and_other_sites(self, staff, customer):
        async def scenario():
            for user, origin in ((customer, b"http://testserver"), (None, b"http://testserver"),
                                 (staff, b"https://evil.example")):
                socket, connected, code = await open_inbox(user, origin)
                assert not connected and code == 4403

        async_to_sync(scenario)()


@pytest.mark.django_db
def test_a_message_during_a_handoff_is_announced(staff, webchat_channel, customer, fake_llm,
                                                 django_capture_on_commit_callbacks):
    asking = ask_for_a_person(webchat_channel, customer, fake_llm)
    listener = Listener(INBOX_GROUP)
    later = send(webchat_channel, customer, "are you there?", conversation_id=str(asking.conversation_id))
    with django_capture_on_commit_callbacks(execute=True), pytest.raises(WaitingForEarlier):
        agent_run(later.id)  # waits behind the held message: the run never claims it
    assert [e["conversation_id"] for e in listener.drain()] == [str(later.conversation_id)]


@pytest.mark.django_db
def test_a_message_waiting_without_a_handoff_is_not_announced(webchat_channel, customer, fake_llm,
                                                              django_capture_on_commit_callbacks):
    first = send(webchat_channel, customer, "one")
    second = send(webchat_channel, customer, "two", conversation_id=str(first.conversation_id))
    listener = Listener(INBOX_GROUP)
    with django_capture_on_commit_callbacks(execute=True), pytest.raises(WaitingForEarlier):
        agent_run(second.id)
    assert listener.drain() == []

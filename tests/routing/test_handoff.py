"""Human handoff: staff take over from the admin, the agent pauses, staff reply on the channel, hand back."""

import json
from datetime import timedelta

import pytest
from asgiref.sync import async_to_sync
from django.utils import timezone

from apps.agents.runtime import agent_run
from apps.conversations.apis import stored_reply_within
from apps.conversations.models import Message
from apps.conversations.realtime import conversation_group
from apps.logs.models import AuditEvent, LLMCall
from apps.routing.models import Handoff
from tests.helpers import Listener, send


@pytest.fixture
def staff(admin_user):
    admin_user.is_superuser = True
    admin_user.save()
    return admin_user


def handoff_url(conversation_id, action):
    return f"/admin/conversations/conversation/{conversation_id}/handoff/{action}/"


@pytest.mark.django_db
class TestHandoff:
    def test_take_over_reply_and_hand_back(self, client, staff, webchat_channel, customer, fake_llm):
        first = send(webchat_channel, customer, "hello bot")
        agent_run(first.id)
        conversation_id = first.conversation_id
        client.force_login(staff)
        assert client.post(handoff_url(conversation_id, "start")).status_code == 302
        assert Handoff.objects.get(conversation_id=conversation_id).staff == staff

        # The agent pauses: no model call, the message waits for the human.
        held = send(webchat_channel, customer, "I want a person", conversation_id=str(conversation_id))
        before = fake_llm.stats()["requests"]
        assert agent_run(held.id) is None
        assert fake_llm.stats()["requests"] == before
        held.refresh_from_db()
        assert held.status == "accepted" and not LLMCall.objects.filter(message=held).exists()

        # The human's reply goes out on the web chat, as the staff member.
        listener = Listener(conversation_group(conversation_id))
        client.post(handoff_url(conversation_id, "reply"), {"text": "Hi, Sam from support here."})
        reply = Message.objects.get(reply_to=held)
        assert reply.sender == staff and reply.direction == "out" and reply.status == "sent"
        events = listener.drain()
        assert [e["type"] for e in events] == ["chat.reply"] and events[0]["message"] == "Hi, Sam from support here."
        held.refresh_from_db()
        assert held.status == "answered"

        # Handed back: the agent answers again.
        client.post(handoff_url(conversation_id, "end"))
        after = send(webchat_channel, customer, "thanks", conversation_id=str(conversation_id))
        assert agent_run(after.id).text == "Echo: thanks"
        assert set(AuditEvent.objects.filter(actor=staff).values_list("action", flat=True)) == {
            "handoff.started", "handoff.replied", "handoff.ended"}

        # The conversation page shows who answered what.
        page = client.get(f"/admin/conversations/conversation/{conversation_id}/change/").content.decode()
        assert f"human: {staff.username}" in page and "agent: assistant" in page

    def test_human_reply_wakes_an_api_waiter(self, staff, api_channel, customer):
        from apps.routing.services import handoff_reply, handoff_start

        message = send(api_channel, customer, "hello")
        handoff_start(conversation=message.conversation, staff=staff)
        agent_run(message.id)
        listener = Listener.waiting_for(message)
        handoff_reply(conversation=message.conversation, staff=staff, text="A human answer")
        events = listener.drain()
        assert [e["type"] for e in events] == ["agent.reply"] and events[0]["message"] == "A human answer"

    def test_every_held_messages_waiter_and_resend_gets_the_human_reply(self, staff, api_channel, customer):
        from apps.routing.services import handoff_reply, handoff_start

        first = send(api_channel, customer, "hello?")
        handoff_start(conversation=first.conversation, staff=staff)
        second = send(api_channel, customer, "anyone there?", conversation_id=str(first.conversation_id))
        listeners = [Listener.waiting_for(first), Listener.waiting_for(second)]
        assert agent_run(first.id) is None  # held for the human
        assert agent_run(second.id, ignore_order=True) is None  # and after it
        reply = handoff_reply(conversation=first.conversation, staff=staff, text="Yes, Sam here.")
        assert reply.reply_to_id == second.id  # it answers the latest; the earlier one with it
        for listener in listeners:
            events = listener.drain()
            assert [(e["type"], e["message"]) for e in events] == [("agent.reply", "Yes, Sam here.")]
        # A resend of the earlier request (its Idempotency-Key) reads the same answer back.
        event = async_to_sync(stored_reply_within)(first.id, 1)
        assert (event["type"], event["message"], event["message_id"]) == ("agent.reply", "Yes, Sam here.",
                                                                          str(reply.id))

    def test_a_resend_of_a_held_message_reads_the_human_reply_not_an_earlier_answer(self, staff, api_channel,
                                                                                     customer):
        from apps.routing.services import handoff_reply, handoff_start

        asked = send(api_channel, customer, "what are your opening hours?")
        conversation_id = str(asked.conversation_id)
        held = send(api_channel, customer, "human", conversation_id=conversation_id)  # while the agent answers
        answer = agent_run(asked.id)
        assert answer.created_at > held.created_at  # stored after the held message came in
        assert agent_run(held.id) is None  # a person is asked for: held
        latest = send(api_channel, customer, "hello? anyone?", conversation_id=conversation_id)
        assert agent_run(latest.id, ignore_order=True) is None
        handoff_start(conversation=asked.conversation, staff=staff)
        reply = handoff_reply(conversation=asked.conversation, staff=staff, text="Hi, Sam from support here.")
        event = async_to_sync(stored_reply_within)(held.id, 1)
        assert (event["message_id"], event["message"]) == (str(reply.id), "Hi, Sam from support here.")

    def test_a_message_whose_run_is_under_way_gets_the_human_answer_only(self, staff, api_channel, customer):
        from apps.agents.claims import claim
        from apps.agents.delivery import save_reply
        from apps.agents.llm import LLMResult
        from apps.routing.services import handoff_reply, handoff_start

        first = send(api_channel, customer, "first question")
        second = send(api_channel, customer, "second", conversation_id=str(first.conversation_id))
        listeners = {first.id: Listener.waiting_for(first), second.id: Listener.waiting_for(second)}
        in_flight = claim(first.id)  # a run has it and is waiting for the model ...
        handoff_start(conversation=first.conversation, staff=staff)  # ... when a person takes over
        human = handoff_reply(conversation=first.conversation, staff=staff, text="Sam here, I have it.")
        assert human.reply_to_id == second.id
        assert save_reply(in_flight, LLMResult(text="Echo: first question", model="fake-gpt")) is None  # dropped
        assert not Message.objects.filter(reply_to=first).exists()
        for message_id, listener in listeners.items():  # each told one answer, and a resend the same
            assert [e["message"] for e in listener.drain()] == ["Sam here, I have it."]
            assert async_to_sync(stored_reply_within)(message_id, 1)["message"] == "Sam here, I have it."

    def test_a_run_under_way_never_takes_an_undelivered_human_reply_for_its_own(
            self, staff, api_channel, customer, monkeypatch, settings):
        import redis

        from apps.agents.claims import claim
        from apps.agents.delivery import save_reply
        from apps.agents.llm import LLMResult
        from apps.conversations import realtime
        from apps.routing.services import handoff_reply, handoff_start

        message = send(api_channel, customer, "question")
        Listener.waiting_for(message)
        in_flight = claim(message.id)
        handoff_start(conversation=message.conversation, staff=staff)
        monkeypatch.setattr(realtime, "_is_pubsub", lambda layer: True)  # the layer's Redis, gone: the
        monkeypatch.setattr(realtime, "_publisher", redis.Redis(host="127.0.0.1", port=1,  # human reply
                                                                socket_connect_timeout=0.2))  # stays pending
        settings.CONNECTOR_SEND_ATTEMPTS = 1
        human = handoff_reply(conversation=message.conversation, staff=staff, text="Human answer")
        assert Message.objects.get(pk=human.pk).status == "pending"
        assert save_reply(in_flight, LLMResult(text="Echo: question", model="fake-gpt")) is None

    def test_a_run_streaming_when_a_person_answers_takes_its_pieces_back(self, staff, webchat_channel, customer,
                                                                          fake_llm, monkeypatch):
        """The person's reply is the message's answer: the pieces the run streamed, before and after
        it, are taken back once the run finds its own reply dropped."""
        from apps.connectors.webchat import WebchatConnector
        from apps.routing.services import handoff_reply, handoff_start

        message = send(webchat_channel, customer, "tell me a long story")
        listener = Listener(conversation_group(message.conversation_id))
        stream_piece = WebchatConnector.send_delta

        def a_person_answers_at_the_first_piece(connector, inbound, piece):
            stream_piece(connector, inbound, piece)
            if not Handoff.objects.filter(conversation_id=inbound.conversation_id).exists():
                handoff_start(conversation=inbound.conversation, staff=staff)
                handoff_reply(conversation=inbound.conversation, staff=staff, text="Sam here.")

        monkeypatch.setattr(WebchatConnector, "send_delta", a_person_answers_at_the_first_piece)
        assert agent_run(message.id) is None
        events = listener.drain()
        kinds = [e["type"] for e in events]
        assert kinds[0] == "chat.delta" and kinds.count("chat.delta") > 1  # it went on streaming after
        assert [e["message"] for e in events if e["type"] == "chat.reply"] == ["Sam here."]
        assert events[-1] == {"type": "chat.reset", "reply_to": str(message.id)}
        assert list(Message.objects.filter(reply_to=message).values_list("text", flat=True)) == ["Sam here."]

    def test_a_reply_after_the_agent_failed_is_not_a_follow_up(self, staff, api_channel, customer):
        from apps.agents.claims import claim
        from apps.agents.delivery import fail_message
        from apps.agents.llm import LLMError
        from apps.routing.services import handoff_reply, handoff_start

        message = send(api_channel, customer, "question")
        fail_message(claim(message.id), LLMError("provider_error", "The model failed."))
        handoff_start(conversation=message.conversation, staff=staff)
        reply = handoff_reply(conversation=message.conversation, staff=staff, text="Sam here: it is 42.")
        assert (reply.reply_to_id, reply.follows_up) == (message.id, False)

    def test_an_earlier_messages_answer_is_read_back_after_its_author_is_deleted(self, staff, make_user,
                                                                                api_channel, customer):
        """A resend of a message a person answered through a later one reads their reply, even
        once their user is gone (the reply's sender is then empty, like an agent's)."""
        from apps.routing.services import handoff_reply, handoff_start

        other = make_user(None)
        other.is_staff = other.is_superuser = True
        other.save()
        first = send(api_channel, customer, "hello?")
        handoff_start(conversation=first.conversation, staff=other)
        second = send(api_channel, customer, "anyone?", conversation_id=str(first.conversation_id))
        assert agent_run(first.id) is None  # held for the person
        assert agent_run(second.id, ignore_order=True) is None
        reply = handoff_reply(conversation=first.conversation, staff=other, text="Yes, Sam here.")
        assert Message.objects.get(pk=first.pk).control["answered_by"] == str(reply.pk)
        other.delete()
        for message in (first, second):
            assert async_to_sync(stored_reply_within)(message.id, 1)["message"] == "Yes, Sam here."

    def test_deleting_a_staff_user_who_followed_up_an_answer(self, make_user, api_channel, customer):
        """Their reply loses its sender but stays a person's: it is not a second agent reply to
        the message (the database would refuse the delete), and a resend reads the agent's."""
        from apps.routing.services import handoff_reply, handoff_start

        other = make_user(None)
        other.is_staff = other.is_superuser = True
        other.save()
        message = send(api_channel, customer, "question")
        answer = agent_run(message.id)
        handoff_start(conversation=message.conversation, staff=other)
        follow_up = handoff_reply(conversation=message.conversation, staff=other, text="Anything else?")
        assert follow_up.follows_up
        other.delete()
        follow_up.refresh_from_db()
        assert (follow_up.sender_id, follow_up.agent_id, follow_up.text) == (None, None, "Anything else?")
        assert async_to_sync(stored_reply_within)(message.id, 1)["message"] == answer.text

    def test_a_message_answered_in_a_handoff_before_answers_were_recorded(self, staff, api_channel, customer):
        """Rows from before ``answered_by``: a resend guesses a person's reply to a later message,
        not the agent's answer to it."""
        first = send(api_channel, customer, "first")
        second = send(api_channel, customer, "second", conversation_id=str(first.conversation_id))
        agent_run(second.id, ignore_order=True)
        Message.objects.filter(pk=first.pk).update(status="answered")
        Message.objects.create(conversation=first.conversation, channel=first.channel, direction="out",
                               status="sent", reply_to=second, sender=staff, text="Sam here")
        assert async_to_sync(stored_reply_within)(first.id, 1)["message"] == "Sam here"
        staff.delete()  # the agent's reply and the person's lose their agent and their sender ...
        first.agent.delete()
        assert async_to_sync(stored_reply_within)(first.id, 1)["message"] == "Sam here"  # ... not their model

    def test_a_run_failing_after_a_human_answered_tells_nothing_more(self, staff, api_channel, customer):
        from apps.agents.claims import claim
        from apps.agents.delivery import fail_message
        from apps.agents.llm import LLMError
        from apps.routing.services import handoff_reply, handoff_start

        message = send(api_channel, customer, "question")
        listener = Listener.waiting_for(message)
        in_flight = claim(message.id)
        handoff_start(conversation=message.conversation, staff=staff)
        handoff_reply(conversation=message.conversation, staff=staff, text="Human answer")
        fail_message(in_flight, LLMError("provider_error", "The model failed."))  # the run's model fails after
        assert Message.objects.get(pk=message.pk).status == "answered"
        assert [(e["type"], e["message"]) for e in listener.drain()] == [("agent.reply", "Human answer")]
        assert async_to_sync(stored_reply_within)(message.id, 1)["message"] == "Human answer"

    def test_a_message_whose_run_died_keeps_the_human_answer_after_the_hand_back(self, staff, api_channel,
                                                                                customer):
        from apps.agents.claims import claim
        from apps.routing.services import handoff_end, handoff_reply, handoff_start

        message = send(api_channel, customer, "question")
        claim(message.id)  # its run dies: the message stays processing until its lease runs out
        Message.objects.filter(pk=message.pk).update(lease_until=timezone.now() - timedelta(seconds=1))
        handoff_start(conversation=message.conversation, staff=staff)
        handoff_reply(conversation=message.conversation, staff=staff, text="A human answer")
        handoff_end(conversation=message.conversation, staff=staff)
        assert agent_run(message.id) is None  # recovery's run finds it answered
        assert list(Message.objects.filter(reply_to=message).values_list("text", flat=True)) == ["A human answer"]

    def test_a_human_reply_between_a_runs_claim_and_its_hold_stands(self, staff, api_channel, customer):
        from apps.agents.claims import claim
        from apps.routing.services import handoff_end, handoff_reply, handoff_start, hold_for_handoff

        first = send(api_channel, customer, "hello")
        agent_run(first.id)
        handoff_start(conversation=first.conversation, staff=staff)
        message = send(api_channel, customer, "are you there", conversation_id=str(first.conversation_id))
        claimed = claim(message.id)  # the run has it, about to put it back for the human ...
        handoff_reply(conversation=message.conversation, staff=staff, text="Here!")  # ... who answers first
        assert hold_for_handoff(claimed)
        message.refresh_from_db()
        assert message.status == "answered"
        handoff_end(conversation=message.conversation, staff=staff)
        assert agent_run(message.id) is None
        assert list(Message.objects.filter(reply_to=message).values_list("text", flat=True)) == ["Here!"]

    def test_a_human_reply_goes_out_while_the_channel_layer_is_down(self, client, staff, api_channel, customer,
                                                                    monkeypatch, settings):
        import redis

        from apps.conversations import realtime
        from apps.routing.services import handoff_start

        first = send(api_channel, customer, "hello?")
        handoff_start(conversation=first.conversation, staff=staff)
        second = send(api_channel, customer, "anyone?", conversation_id=str(first.conversation_id))
        Listener.waiting_for(first), Listener.waiting_for(second)
        assert agent_run(first.id) is None and agent_run(second.id, ignore_order=True) is None
        monkeypatch.setattr(realtime, "_is_pubsub", lambda layer: True)  # the layer's Redis, gone
        monkeypatch.setattr(realtime, "_publisher", redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2))
        settings.CONNECTOR_SEND_ATTEMPTS = 1
        monkeypatch.setattr(realtime, "UNHEARD_PAUSES", ())
        client.force_login(staff)
        response = client.post(handoff_url(first.conversation_id, "reply"), {"text": "Sam here"})
        assert response.status_code == 302
        assert AuditEvent.objects.filter(action="handoff.replied", actor=staff).exists()
        reply = Message.objects.get(reply_to=second)
        assert (reply.status, reply.error_code) == ("pending", "delivery_deferred")  # recovery delivers it

    def test_hand_back_requeues_unanswered_messages(self, staff, api_channel, customer,
                                                    django_capture_on_commit_callbacks):
        from apps.routing.services import handoff_end, handoff_start

        message = send(api_channel, customer, "anyone?")
        handoff_start(conversation=message.conversation, staff=staff)
        assert agent_run(message.id) is None
        with django_capture_on_commit_callbacks() as callbacks:
            handoff_end(conversation=message.conversation, staff=staff)
        requeues = [c for c in callbacks if c.__qualname__.startswith("handoff_end")]  # not the inbox notice
        assert len(requeues) == 1  # the held message goes back to the agent queue
        assert agent_run(message.id).text == "Echo: anyone?"

    def test_a_second_staff_member_cannot_take_over_or_reply(self, client, staff, make_user, api_channel, customer):
        from apps.routing.services import handoff_start

        message = send(api_channel, customer, "hello")
        handoff_start(conversation=message.conversation, staff=staff)
        other = make_user("admin", is_staff=True, is_superuser=True)
        client.force_login(other)
        response = client.post(handoff_url(message.conversation_id, "start"), follow=True)
        assert "is handling this conversation" in response.content.decode()
        client.post(handoff_url(message.conversation_id, "reply"), {"text": "me too"})
        assert not Message.objects.filter(reply_to=message).exists()
        assert Handoff.objects.get(conversation_id=message.conversation_id).staff == staff

    def test_staff_without_change_permission_is_refused(self, client, make_user, api_channel, customer):
        message = send(api_channel, customer, "hello")
        employee_staff = make_user("employee", is_staff=True)
        client.force_login(employee_staff)
        assert client.post(handoff_url(message.conversation_id, "start")).status_code == 403
        assert not Handoff.objects.exists()

    def test_customers_cannot_reach_the_handoff(self, client, customer, api_channel):
        message = send(api_channel, customer, "hello")
        client.force_login(customer)
        response = client.post(handoff_url(message.conversation_id, "start"))
        assert response.status_code == 302 and "/admin/login/" in response["Location"]
        assert not Handoff.objects.exists()

    def test_get_is_not_allowed(self, client, staff, api_channel, customer):
        message = send(api_channel, customer, "hello")
        client.force_login(staff)
        assert client.get(handoff_url(message.conversation_id, "start")).status_code == 405


@pytest.mark.django_db
def test_messages_held_for_a_human_are_not_requeued_as_stuck(staff, api_channel, customer, settings):
    from apps.agents.recovery import stuck_messages
    from apps.routing.services import handoff_end, handoff_start

    settings.GATEWAY_REQUEUE_ACCEPTED_AFTER_SECONDS = 0
    message = send(api_channel, customer, "waiting for a person")
    handoff_start(conversation=message.conversation, staff=staff)
    agent_run(message.id)
    assert message not in stuck_messages()
    handoff_end(conversation=message.conversation, staff=staff)
    assert message in stuck_messages()


async def face_stream_of(message):
    """The OpenAI face's stream for ``message`` as its request serves it, after the run's first piece."""
    from asgiref.sync import sync_to_async

    from apps.conversations.openai_face import _sse
    from apps.conversations.realtime import INBOX_KEY
    from apps.conversations.waiters import ReplyWaiter

    waiter = ReplyWaiter(message.id)
    await waiter.__aenter__()
    message.control = {**(message.control or {}), INBOX_KEY: waiter.inbox_name, "stream": True}
    await Message.objects.filter(pk=message.pk).aupdate(control=message.control)
    stream = _sse(waiter, "chatcmpl-test", 0, "assistant", False)
    assert '"role": "assistant"' in await anext(stream)
    await sync_to_async(message.channel.connector.send_delta)(message, "Echo: que")  # the run's first piece
    assert '"content": "Echo: que"' in await anext(stream)
    return stream


async def rest_of(stream) -> list[dict]:
    chunks = [chunk async for chunk in stream]
    return [json.loads(chunk.removeprefix("data: ")) for chunk in chunks if chunk != "data: [DONE]\n\n"]


def replaced_by(chunks: list[dict], text: str) -> bool:
    return (len(chunks) == 1 and chunks[0]["error"]["code"] == "answer_replaced"
            and chunks[0]["error"]["message"].endswith(f"Their answer: {text}"))


@pytest.mark.django_db(transaction=True)
class TestFaceStreamDuringAHandoff:
    """Pieces sent over SSE cannot be taken back: a face stream whose message a person answered
    ends with an error that carries their answer, never with "stop" after the run's half answer;
    a person's follow-up to the run's own answer leaves that answer standing."""

    async def test_the_persons_reply_after_the_runs_pieces(self, staff, api_channel, customer):
        from asgiref.sync import sync_to_async

        from apps.conversations.models import Conversation
        from apps.routing.services import handoff_reply, handoff_start

        message = await sync_to_async(send)(api_channel, customer, "question")
        stream = await face_stream_of(message)
        conversation = await Conversation.objects.aget(pk=message.conversation_id)
        await sync_to_async(handoff_start)(conversation=conversation, staff=staff)
        await sync_to_async(handoff_reply)(conversation=conversation, staff=staff, text="Sam here.")
        assert replaced_by(await rest_of(stream), "Sam here.")

    async def test_the_runs_reset_before_the_persons_reply(self, staff, api_channel, customer, monkeypatch):
        """The run finds its reply dropped and takes its pieces back before the person's reply to
        a later message reaches this one (it is told after the later message is delivered)."""
        from asgiref.sync import sync_to_async

        from apps.connectors.api import ApiConnector
        from apps.conversations.models import Conversation
        from apps.routing.services import handoff_reply, handoff_start

        message = await sync_to_async(send)(api_channel, customer, "question")
        later = await sync_to_async(send)(api_channel, customer, "hello?", conversation_id=str(message.conversation_id))
        stream = await face_stream_of(message)
        deliver_to_later = ApiConnector.send

        def the_run_resets_meanwhile(connector, reply, *, inbound):
            connector.send_reset(message, replaced=True)  # as runtime._answer does once save_reply returned None
            deliver_to_later(connector, reply, inbound=inbound)

        monkeypatch.setattr(ApiConnector, "send", the_run_resets_meanwhile)
        conversation = await Conversation.objects.aget(pk=message.conversation_id)
        await sync_to_async(handoff_start)(conversation=conversation, staff=staff)
        human = await sync_to_async(handoff_reply)(conversation=conversation, staff=staff, text="Sam here.")
        assert human.reply_to_id == later.id
        assert replaced_by(await rest_of(stream), "Sam here.")

    async def test_a_persons_follow_up_to_the_runs_own_answer(self, staff, api_channel, customer):
        """Staff reply just after the run stored its answer and before it is delivered: the
        follow-up reaches the request first, and the run's answer is still the one it gets."""
        from asgiref.sync import sync_to_async

        from apps.agents.claims import claim
        from apps.agents.delivery import deliver, save_reply
        from apps.agents.llm import LLMResult
        from apps.conversations.models import Conversation
        from apps.routing.services import handoff_reply, handoff_start

        message = await sync_to_async(send)(api_channel, customer, "question")
        stream = await face_stream_of(message)
        in_flight = await sync_to_async(claim)(message.id)
        reply = await sync_to_async(save_reply)(in_flight, LLMResult(text="Echo: question", model="fake-gpt"))
        conversation = await Conversation.objects.aget(pk=message.conversation_id)
        await sync_to_async(handoff_start)(conversation=conversation, staff=staff)
        await sync_to_async(handoff_reply)(conversation=conversation, staff=staff, text="Anything else?")
        await sync_to_async(deliver)(reply, inbound=in_flight)
        rest = await rest_of(stream)
        assert [c["choices"][0]["finish_reason"] for c in rest] == ["stop"]

    async def test_a_waiting_request_gets_the_runs_answer_not_a_follow_up(self, staff, api_channel, customer):
        """The same race without a stream (`wait`, the face's JSON answer): the request answers
        with the run's reply, as its resend does."""
        from asgiref.sync import sync_to_async

        from apps.agents.claims import claim
        from apps.agents.delivery import deliver, save_reply
        from apps.agents.llm import LLMResult
        from apps.conversations.models import Conversation
        from apps.conversations.realtime import INBOX_KEY
        from apps.conversations.waiters import ReplyWaiter
        from apps.routing.services import handoff_reply, handoff_start

        message = await sync_to_async(send)(api_channel, customer, "question")
        async with ReplyWaiter(message.id) as waiter:
            await Message.objects.filter(pk=message.pk).aupdate(control={INBOX_KEY: waiter.inbox_name})
            in_flight = await sync_to_async(claim)(message.id)
            reply = await sync_to_async(save_reply)(in_flight, LLMResult(text="Echo: question", model="fake-gpt"))
            conversation = await Conversation.objects.aget(pk=message.conversation_id)
            await sync_to_async(handoff_start)(conversation=conversation, staff=staff)
            human = await sync_to_async(handoff_reply)(conversation=conversation, staff=staff, text="Anything else?")
            await sync_to_async(deliver)(reply, inbound=in_flight)
            event = await waiter.final_event(5)
        assert (event["message"], event["by_person"]) == ("Echo: question", False)
        assert human.follows_up and human.reply_to_id == message.id
        # A resend reads the agent's answer, even when the follow-up was stored first (two
        # processes' clocks, or a transaction that began before the run stored its reply).
        await Message.objects.filter(pk=human.pk).aupdate(created_at=reply.created_at - timedelta(seconds=1))
        assert (await stored_reply_within(message.id, 1))["message"] == "Echo: question"

    async def test_an_earlier_message_answered_by_a_person_after_the_agent_answered_a_later_one(
            self, staff, api_channel, customer):
        """The earlier message's run is slow (or died); the agent answered the later one first; a
        person's reply then answers the earlier one: its request and its resend get that reply,
        not the agent's answer to the later message."""
        from asgiref.sync import sync_to_async

        from apps.agents.claims import claim
        from apps.agents.delivery import deliver, save_reply
        from apps.agents.llm import LLMResult
        from apps.conversations.models import Conversation
        from apps.conversations.realtime import INBOX_KEY
        from apps.conversations.waiters import ReplyWaiter
        from apps.routing.services import handoff_reply, handoff_start

        first = await sync_to_async(send)(api_channel, customer, "first")
        second = await sync_to_async(send)(api_channel, customer, "second", conversation_id=str(first.conversation_id))
        async with ReplyWaiter(first.id) as waiter:
            await Message.objects.filter(pk=first.pk).aupdate(control={INBOX_KEY: waiter.inbox_name})
            await sync_to_async(claim)(first.id)  # its run waits on a slow model
            later = await sync_to_async(claim)(second.id, ignore_order=True)
            answer = await sync_to_async(save_reply)(later, LLMResult(text="Echo: second", model="fake-gpt"))
            await sync_to_async(deliver)(answer, inbound=later)
            conversation = await Conversation.objects.aget(pk=first.conversation_id)
            await sync_to_async(handoff_start)(conversation=conversation, staff=staff)
            await sync_to_async(handoff_reply)(conversation=conversation, staff=staff, text="Sam here.")
            event = await waiter.final_event(5)
        assert (event["message"], event["by_person"]) == ("Sam here.", True)
        assert (await stored_reply_within(first.id, 1))["message"] == "Sam here."
        assert (await stored_reply_within(second.id, 1))["message"] == "Echo: second"

    async def test_another_runs_answer_after_the_text_was_taken_back(self, api_channel, customer):
        """A run outlived its lease and another claimed the message: the first takes its text
        back as replaced, and the client, which cannot be shown a fresh answer after it, is told
        to retry rather than given the second run's text glued to the first's."""
        from asgiref.sync import sync_to_async

        from apps.agents.claims import claim
        from apps.agents.delivery import deliver, save_reply
        from apps.agents.llm import LLMResult

        message = await sync_to_async(send)(api_channel, customer, "question")
        stream = await face_stream_of(message)
        await sync_to_async(api_channel.connector.send_reset)(message, replaced=True)
        second_run = await sync_to_async(claim)(message.id, ignore_order=True)
        await sync_to_async(api_channel.connector.send_delta)(message, "Echo: question")
        reply = await sync_to_async(save_reply)(second_run, LLMResult(text="Echo: question", model="fake-gpt"))
        await sync_to_async(deliver)(reply, inbound=second_run)
        rest = await rest_of(stream)
        assert len(rest) == 1 and rest[0]["error"]["code"] == "agent_failed"

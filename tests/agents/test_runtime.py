"""The agent run: claim, history, model call through the real openai client, reply, logs."""
from contextlib import nullcontext
from datetime import timedelta

import pytest
from asgiref.sync import async_to_sync
from django.db import connection
from django.utils import timezone
from rest_framework.test import APIClient

from apps.agents.claims import claim, release_claim
from apps.agents.delivery import save_reply
from apps.agents.llm import LLMResult
from apps.agents.runtime import agent_run
from apps.conversations.apis import stored_reply_within
from apps.conversations.models import Message
from apps.conversations.realtime import conversation_group
from apps.core.errors import error_from_event
from apps.logs.models import LLMCall
from tests.helpers import Listener, send


@pytest.mark.django_db
class TestAgentRun:
    def test_answers_and_logs_tokens_cost_latency(self, api_channel, customer, fake_llm):
        message = send(api_channel, customer, "hello agent")
        listener = Listener.waiting_for(message)
        reply = agent_run(message.id)
        message.refresh_from_db()
        assert message.status == "answered"
        assert reply.text == "Echo: hello agent" and reply.direction == "out" and reply.status == "sent"
        assert reply.reply_to_id == message.id and reply.total_tokens > 0
        call = LLMCall.objects.get(message=message)
        assert call.status == "ok" and call.model == "fake-gpt" and call.user == customer
        assert call.total_tokens == call.prompt_tokens + call.completion_tokens == reply.total_tokens
        expected_cost = (call.prompt_tokens * 0.001 + call.completion_tokens * 0.002) / 1000
        assert float(call.cost) == pytest.approx(expected_cost)
        events = listener.drain()
        assert [e["type"] for e in events] == ["agent.reply"]
        assert events[0]["message"] == "Echo: hello agent" and events[0]["usage"]["total_tokens"] > 0

    def test_redelivered_task_answers_once(self, api_channel, customer, fake_llm):
        message = send(api_channel, customer, "only once please")
        before = fake_llm.stats()["requests"]
        assert agent_run(message.id) is not None
        assert agent_run(message.id) is None
        assert Message.objects.filter(reply_to=message).count() == 1
        assert fake_llm.stats()["requests"] == before + 1

    def test_a_dead_workers_claim_expires(self, api_channel, customer):
        message = send(api_channel, customer, "retry me")
        held_until = timezone.now() + timedelta(minutes=5)
        Message.objects.filter(pk=message.pk).update(status="processing", lease_until=held_until)
        assert agent_run(message.id) is None  # another worker holds it
        Message.objects.filter(pk=message.pk).update(lease_until=timezone.now() - timedelta(seconds=1))
        assert agent_run(message.id).text == "Echo: retry me"
        message.refresh_from_db()
        assert message.attempts == 1 and message.status == "answered"

    def test_a_run_the_database_failed_under_gives_back_only_its_own_claim(self, api_channel, customer):
        message = send(api_channel, customer, "the database went away")
        first = claim(message.id)
        assert first.attempts == 1
        assert release_claim(message.id, 1) == 1  # the retry of the failed run takes it back
        message.refresh_from_db()
        assert message.status == "accepted" and message.lease_until is None
        claim(message.id)  # claimed again (attempts 2), e.g. by the requeue task after the lease
        assert release_claim(message.id, 1) == 0  # a stale release leaves the new claim alone
        message.refresh_from_db()
        assert (message.status, message.attempts) == ("processing", 2)
        Message.objects.filter(pk=message.pk).update(lease_until=timezone.now() - timedelta(seconds=1))
        assert agent_run(message.id, release_attempt=1).text == "Echo: the database went away"
        assert release_claim(message.id, 3) == 0  # answered: nothing to give back
        message.refresh_from_db()
        assert message.status == "answered"

    @pytest.mark.parametrize("stream", [False, True], ids=["json", "streamed"])
    def test_the_id_the_provider_answers_with_names_the_reply_within_its_column(
            self, api_channel, webchat_channel, customer, llm_model, fake_llm, stream):
        """A routed or dated id longer than the column is cut, and an agent's reply always names a
        model (one that names none would be taken for a person's): the paid answer is kept."""
        channel = webchat_channel if stream else api_channel  # the web chat streams
        long_id = "fake-gpt-2026-12-06-" + "x" * 120
        message = send(channel, customer, f"hello [[answer_model:{long_id}]]")
        reply = agent_run(message.id)
        assert reply is not None and reply.text == "Echo: hello" and reply.status == "sent"
        assert Message.objects.get(pk=reply.pk).model == long_id[:100] and reply.by_agent
        assert LLMCall.objects.get(message=message).model == long_id[:100]
        llm_model.name = ""  # only the ORM can write it so, but the provider may echo it back
        llm_model.save()
        nameless = send(channel, customer, "again [[answer_model:]]", conversation_id=str(message.conversation_id))
        reply = agent_run(nameless.id)
        assert reply is not None and Message.objects.get(pk=reply.pk).model == "unknown" and reply.by_agent

    def test_history_is_sent_to_the_model(self, api_channel, customer, fake_llm):
        first = send(api_channel, customer, "my name is Ada")
        agent_run(first.id)
        second = send(api_channel, customer, "what is my name?", conversation_id=str(first.conversation_id))
        agent_run(second.id)
        sent = fake_llm.stats()["last_request"]["messages"]
        assert [(m["role"], m["content"]) for m in sent] == [
            ("system", "Be brief."), ("user", "my name is Ada"), ("assistant", "Echo: my name is Ada"),
            ("user", "what is my name?"),
        ]

    def test_model_error_fails_the_message_logs_it_and_tells_the_sender(self, api_channel, customer):
        message = send(api_channel, customer, "boom [[fail:500]]")
        listener = Listener.waiting_for(message)
        assert agent_run(message.id) is None
        message.refresh_from_db()
        assert message.status == "failed" and message.error_code == "provider_error"
        calls = LLMCall.objects.filter(message=message).order_by("attempt")
        assert [c.attempt for c in calls] == [1, 2, 3]  # the first try and two retries, all logged
        assert all(c.status == "error" and "500" in c.error for c in calls)
        events = listener.drain()
        assert [e["type"] for e in events] == ["agent.error"]
        assert events[0]["code"] == "agent_failed"
        # A resend of the request (its Idempotency-Key) reads the failure back: told the same.
        told = error_from_event(events[0])
        retold = error_from_event(async_to_sync(stored_reply_within)(message.id, 1))
        assert (retold.status, retold.code, retold.message) == (told.status, "agent_failed", told.message)

    @pytest.mark.parametrize("withdrawn", ["revoked", "expired", "blocked", "disabled"])
    def test_a_message_queued_before_its_key_or_sender_was_refused_is_not_answered(
            self, api_channel, customer, api_key_for, fake_llm, withdrawn):
        """A revoked key's (or a blocked sender's) queue must not keep spending on the model."""
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {api_key_for(customer)}")
        accepted = client.post("/api/v1/messages", {"message": "queued before"}, format="json")
        assert accepted.status_code == 202
        message = Message.objects.get(pk=accepted.json()["message_id"])
        listener = Listener.waiting_for(message)
        key = message.api_key
        if withdrawn in ("revoked", "expired"):
            setattr(key, {"revoked": "revoked_at", "expired": "expires_at"}[withdrawn], timezone.now())
            key.save()
        else:
            customer.blocked_at = timezone.now() if withdrawn == "blocked" else None
            customer.is_active = withdrawn != "disabled"
            customer.save()
        before = fake_llm.stats()["requests"]
        assert agent_run(message.id) is None
        message.refresh_from_db()
        assert (message.status, message.error_code) == ("failed", "sender_refused")
        assert fake_llm.stats()["requests"] == before and not LLMCall.objects.filter(message=message).exists()
        assert [e["type"] for e in listener.drain()] == ["agent.error"]

    def test_web_chat_streams_deltas_then_the_reply(self, webchat_channel, customer):
        message = send(webchat_channel, customer, "stream this please")
        listener = Listener(conversation_group(message.conversation_id))
        reply = agent_run(message.id)
        events = listener.drain()
        deltas = [e["delta"] for e in events if e["type"] == "chat.delta"]
        assert "".join(deltas) == reply.text == "Echo: stream this please"
        assert len(deltas) > 1
        assert events[-1]["type"] == "chat.reply" and events[-1]["reply_to"] == str(message.id)
        assert LLMCall.objects.get(message=message).ttft_ms is not None

    def test_truncated_stream_is_an_error_not_a_half_answer(self, webchat_channel, customer):
        message = send(webchat_channel, customer, "cut me [[truncate]]")
        listener = Listener(conversation_group(message.conversation_id))
        assert agent_run(message.id) is None
        message.refresh_from_db()
        assert message.status == "failed"
        assert not Message.objects.filter(reply_to=message).exists()
        assert listener.drain()[-1]["type"] == "chat.error"


@pytest.mark.services
@pytest.mark.django_db(transaction=True)
class TestDatabaseConnectionDuringModelCalls:
    """A worker thread gives its pooled connection back while a model answers (model_call.call_model)."""

    def test_released_to_the_pool_outside_a_transaction(self):
        from django.db import connection, transaction

        from apps.agents.model_call import release_database_connection

        assert connection.settings_dict["OPTIONS"].get("pool"), "services mode uses the pool"
        Message.objects.exists()  # borrow a connection
        pool = connection.pool
        lent = pool.get_stats()["pool_size"] - pool.get_stats()["pool_available"]
        assert connection.connection is not None
        release_database_connection()
        assert connection.connection is None
        assert pool.get_stats()["pool_size"] - pool.get_stats()["pool_available"] == lent - 1
        with transaction.atomic():
            Message.objects.exists()
            release_database_connection()  # inside a transaction the connection must stay
            assert connection.connection is not None and connection.in_atomic_block


def _save_reply_cases(api_channel, customer, *, statements=None):
    """save_reply's two outcomes, checked against the database."""
    message = send(api_channel, customer, "answer me")
    Message.objects.filter(pk=message.pk).update(status="processing", lease_until=timezone.now(),
                                                 error_code="model_timeout", error_message="earlier try")
    message.refresh_from_db()
    assert message.agent is not None  # loaded here, as the claim gives it from the configuration cache
    result = LLMResult(text="the answer", model="fake-gpt", prompt_tokens=3, completion_tokens=2, total_tokens=5)
    with statements or nullcontext():
        reply = save_reply(message, result)
    stored = Message.objects.get(pk=reply.pk)
    assert (stored.direction, stored.status, stored.text, stored.reply_to_id) == ("out", "pending", "the answer",
                                                                                  message.pk)
    assert (stored.total_tokens, stored.agent_id, stored.conversation_id) == (5, message.agent_id,
                                                                             message.conversation_id)
    assert stored.created_at == reply.created_at and not reply._state.adding
    inbound = Message.objects.get(pk=message.pk)
    assert (inbound.status, inbound.lease_until, inbound.error_code, inbound.error_message) == (
        "answered", None, "", "")
    assert inbound.text == "answer me"  # nothing else touched

    # The same run writing again (its first write went in, the connection broke before the
    # answer): the stored reply is handed back to be delivered, not a second one stored.
    again = save_reply(message, LLMResult(text="a second answer", model="fake-gpt"))
    assert again is not None and again.pk == reply.pk and again.text == "the answer"
    # Another run (the message claimed again since): nothing to deliver, nothing stored.
    Message.objects.filter(pk=message.pk).update(attempts=message.attempts + 1)
    assert save_reply(message, LLMResult(text="a third answer", model="fake-gpt")) is None
    # Delivered already: nothing to deliver again.
    Message.objects.filter(pk=message.pk).update(attempts=message.attempts)
    Message.objects.filter(pk=reply.pk).update(status="sent")
    assert save_reply(message, LLMResult(text="a fourth answer", model="fake-gpt")) is None
    assert list(Message.objects.filter(reply_to=message).values_list("text", flat=True)) == ["the answer"]


@pytest.mark.django_db
def test_save_reply_inside_a_callers_transaction(api_channel, customer):
    _save_reply_cases(api_channel, customer)


@pytest.mark.django_db(transaction=True)
def test_save_reply_in_autocommit(api_channel, customer, django_assert_num_queries):
    """As in a worker: no transaction around the run, each write commits on its own; on
    PostgreSQL the reply and the message's "answered" go in one statement."""
    one_statement = django_assert_num_queries(1) if connection.vendor == "postgresql" else None
    _save_reply_cases(api_channel, customer, statements=one_statement)


@pytest.mark.django_db
def test_a_stored_reply_is_still_this_runs_after_its_agent_is_deleted(api_channel, customer):
    """The write went in, the connection broke, and meanwhile staff deleted the agent: the retry
    still finds the reply this run stored (it names its model) and delivers it."""
    message = claim(send(api_channel, customer, "answer me").id)
    first = save_reply(message, LLMResult(text="the answer", model="fake-gpt"))
    message.agent.delete()
    again = save_reply(message, LLMResult(text="the answer", model="fake-gpt"))
    assert again is not None and again.pk == first.pk


@pytest.mark.django_db
def test_a_worker_clock_behind_the_web_servers_gives_latency_zero(api_channel, customer):
    message = send(api_channel, customer, "from the future")
    Message.objects.filter(pk=message.pk).update(created_at=timezone.now() + timedelta(seconds=5))
    message = claim(message.id)  # as the run has it
    reply = save_reply(message, LLMResult(text="still answered", model="fake-gpt"))
    assert reply is not None and Message.objects.get(pk=reply.pk).latency_ms == 0


@pytest.mark.django_db(transaction=True)
def test_an_agent_deleted_while_its_model_answers_keeps_the_paid_answer(
        webchat_channel, customer, fake_llm, monkeypatch):
    """Staff delete the agent mid-stream: the call is logged and the reply stored without it (the
    reply still names its model, so it is the agent's), not dropped as if someone else answered."""
    from apps.agents.models import Agent
    from apps.connectors.webchat import WebchatConnector

    message = send(webchat_channel, customer, "a long answer please")
    stream_piece, resets = WebchatConnector.send_delta, []

    def staff_delete_the_agent_at_the_first_piece(connector, inbound, piece):
        stream_piece(connector, inbound, piece)
        Agent.objects.filter(pk=inbound.agent_id).delete()

    monkeypatch.setattr(WebchatConnector, "send_delta", staff_delete_the_agent_at_the_first_piece)
    monkeypatch.setattr(WebchatConnector, "send_reset", lambda connector, inbound, **kw: resets.append(kw))
    reply = agent_run(message.id)
    assert reply is not None and reply.text == "Echo: a long answer please" and reply.status == "sent"
    stored = Message.objects.get(pk=reply.pk)
    assert (stored.agent_id, stored.model, stored.by_agent) == (None, "fake-gpt", True)
    assert Message.objects.get(pk=message.pk).status == "answered" and resets == []
    call = LLMCall.objects.get(message=message)
    assert (call.status, call.agent_id) == ("ok", None)


@pytest.mark.django_db
def test_a_message_whose_agent_was_deleted_before_its_run_fails_and_is_told(api_channel, customer, fake_llm):
    message = send(api_channel, customer, "anyone there?")
    listener = Listener.waiting_for(message)
    message.agent.delete()
    before = fake_llm.stats()["requests"]
    assert agent_run(message.id) is None
    message.refresh_from_db()
    assert (message.status, message.error_code) == ("failed", "agent_unavailable")
    assert [e["type"] for e in listener.drain()] == ["agent.error"]
    assert fake_llm.stats()["requests"] == before

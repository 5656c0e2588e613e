"""Each pipeline step, from the side that passes and the side that must be refused."""
import threading
from contextlib import nullcontext

import pytest
from django.db import connection

from apps.agents.models import Agent
from apps.conversations import pipeline
from apps.conversations.models import Conversation, Message
from apps.conversations.normalized import NormalizedMessage
from apps.core.errors import BadRequest, ChannelDisabled, Forbidden, NoRoute, NotFound, RateLimited
from apps.identities.models import ApiKey, ChannelIdentity
from apps.logs.structured import request_id_var


def normalized(channel, text="hello", **fields):
    return NormalizedMessage(channel=channel.kind, channel_id=channel.slug,
                             user_id=fields.pop("user_id", "u-1"), message=text, **fields)


def _persist_cases(api_channel, customer, agent, *, statements=None):
    """Persist's paths, each checked against the database. ``statements``: a context manager
    counting the statements of the first write (one on PostgreSQL in autocommit)."""
    key = ApiKey.generate(user=customer, name="persist")[0]
    inbound = normalized(api_channel, "one", external_id="p-1", metadata={"thread_id": "t-1", "n": [1, None]},
                         control={"thread": "t-1"}, attachments=[{"type": "file", "name": "a.txt"}],
                         raw={"event": {"text": "one"}}, timestamp=1700000000.25)
    request = request_id_var.set("req-persist")
    try:
        with statements or nullcontext():
            first = pipeline.persist(inbound, channel=api_channel, user=customer, conversation=None, agent=agent,
                                     api_key=key)
    finally:
        request_id_var.reset(request)
    stored = Message.objects.select_related("conversation").get(pk=first.message.pk)
    assert (stored.text, stored.status, stored.external_id, stored.sender_id) == ("one", "accepted", "p-1",
                                                                                 customer.pk)
    assert stored.metadata == {"thread_id": "t-1", "n": [1, None]} and stored.control == {"thread": "t-1"}
    assert stored.attachments == [{"type": "file", "name": "a.txt"}]
    assert stored.raw_payload == {"event": {"text": "one"}}
    assert (stored.channel_timestamp, stored.api_key_id, stored.request_id) == (1700000000.25, key.pk, "req-persist")
    assert stored.conversation.external_thread_id == "t-1" and stored.conversation.agent_id == agent.pk
    assert stored.created_at == first.message.created_at and not first.message._state.adding
    started = stored.conversation.last_message_at

    other = Agent.objects.create(slug="other", name="Other", model=agent.model, visibility=agent.visibility)
    second = pipeline.persist(normalized(api_channel, "two"), channel=api_channel, user=customer,
                              conversation=first.conversation, agent=other)
    conversation = Conversation.objects.get()
    assert second.conversation.pk == conversation.pk and conversation.agent_id == other.pk
    assert conversation.last_message_at > started
    assert list(conversation.messages.order_by("created_at").values_list("text", "agent_id")) == [
        ("one", agent.pk), ("two", other.pk)]

    raced = pipeline.persist(normalized(api_channel, "three", external_id="p-1"), channel=api_channel,
                             user=customer, conversation=None, agent=agent)
    assert raced.duplicate is True and raced.message.pk == first.message.pk
    assert (Conversation.objects.count(), Message.objects.count()) == (1, 2)


@pytest.mark.django_db
def test_persist_inside_a_callers_transaction(api_channel, customer, agent):
    _persist_cases(api_channel, customer, agent)


@pytest.mark.django_db(transaction=True)
def test_persist_in_autocommit(api_channel, customer, agent, django_assert_num_queries):
    """As on a real server: no transaction around the request, each write commits on its own;
    on PostgreSQL the conversation and the message go in one statement."""
    one_statement = django_assert_num_queries(1) if connection.vendor == "postgresql" else None
    _persist_cases(api_channel, customer, agent, statements=one_statement)


@pytest.mark.django_db
class TestAccept:
    def test_persists_message_and_conversation_and_enqueues_after_commit(
        self, api_channel, customer, django_capture_on_commit_callbacks
    ):
        with django_capture_on_commit_callbacks() as callbacks:
            accepted = pipeline.accept(normalized(api_channel, "hi there"), channel=api_channel, principal=customer)
        message = Message.objects.get(pk=accepted.message.pk)
        assert (message.direction, message.status, message.text) == ("in", "accepted", "hi there")
        assert message.conversation.user == customer
        assert message.conversation.agent == api_channel.default_agent
        assert accepted.duplicate is False
        assert len(callbacks) == 1  # the agent run is queued only once the message is committed

    def test_repeated_delivery_returns_the_original_and_enqueues_nothing(
        self, api_channel, customer, django_capture_on_commit_callbacks
    ):
        first = pipeline.accept(normalized(api_channel, external_id="evt-1"), channel=api_channel, principal=customer)
        with django_capture_on_commit_callbacks() as callbacks:
            again = pipeline.accept(normalized(api_channel, external_id="evt-1"), channel=api_channel,
                                    principal=customer)
        assert again.duplicate is True
        assert again.message.pk == first.message.pk
        assert callbacks == []
        assert Message.objects.filter(external_id="evt-1").count() == 1

    def test_racing_duplicate_insert_is_turned_into_the_original(self, api_channel, customer):
        first = pipeline.accept(normalized(api_channel, external_id="evt-2"), channel=api_channel, principal=customer)
        # A second delivery that got past dedupe() before the first was stored:
        raced = pipeline.persist(normalized(api_channel, external_id="evt-2"), channel=api_channel, user=customer,
                                 conversation=None, agent=api_channel.default_agent)
        assert raced.duplicate is True and raced.message.pk == first.message.pk
        assert Conversation.objects.count() == 1  # the raced delivery's new conversation went with it

    def test_a_threads_second_first_message_joins_the_conversation_the_first_started(self, api_channel,
                                                                                     customer):
        """Two first messages of one thread, both looked it up before either was stored: the one
        stored second joins the first one's conversation rather than starting another."""
        agent = api_channel.default_agent
        first = pipeline.persist(normalized(api_channel, "one", control={"thread": "t-9"}), channel=api_channel,
                                 user=customer, conversation=None, agent=agent)
        with pytest.raises(pipeline.ThreadStarted) as raced:
            pipeline.persist(normalized(api_channel, "two", control={"thread": "t-9"}), channel=api_channel,
                             user=customer, conversation=None, agent=agent)
        assert raced.value.conversation.pk == first.conversation.pk
        assert (Conversation.objects.count(), Message.objects.count()) == (1, 1)

    def test_continues_the_senders_own_conversation(self, api_channel, customer):
        first = pipeline.accept(normalized(api_channel), channel=api_channel, principal=customer)
        second = pipeline.accept(normalized(api_channel, conversation_id=str(first.conversation.pk)),
                                 channel=api_channel, principal=customer)
        assert second.conversation.pk == first.conversation.pk
        assert Conversation.objects.count() == 1

    def test_refuses_another_users_conversation(self, api_channel, customer, outsider):
        theirs = pipeline.accept(normalized(api_channel), channel=api_channel, principal=customer)
        with pytest.raises(NotFound):
            pipeline.accept(normalized(api_channel, conversation_id=str(theirs.conversation.pk)),
                            channel=api_channel, principal=outsider)
        assert Message.objects.count() == 1

    def test_refuses_a_disabled_channel(self, api_channel, customer):
        api_channel.enabled = False
        with pytest.raises(ChannelDisabled) as refused:
            pipeline.accept(normalized(api_channel), channel=api_channel, principal=customer)
        assert refused.value.status == 403
        assert not Message.objects.exists()

    def test_refuses_an_inactive_user(self, api_channel, customer):
        customer.is_active = False
        with pytest.raises(Forbidden):
            pipeline.accept(normalized(api_channel), channel=api_channel, principal=customer)

    def test_rate_limit_refuses_past_the_named_rate_with_retry_after(self, api_channel, customer, settings):
        settings.GATEWAY_USER_RATE = "2/m"
        for _ in range(2):
            pipeline.accept(normalized(api_channel), channel=api_channel, principal=customer)
        with pytest.raises(RateLimited) as refused:
            pipeline.accept(normalized(api_channel), channel=api_channel, principal=customer)
        assert refused.value.status == 429
        assert 1 <= refused.value.retry_after <= 60
        assert Message.objects.count() == 2

    def test_rate_limit_is_per_user(self, api_channel, customer, employee, settings):
        settings.GATEWAY_USER_RATE = "1/m"
        pipeline.accept(normalized(api_channel), channel=api_channel, principal=customer)
        pipeline.accept(normalized(api_channel), channel=api_channel, principal=employee)
        with pytest.raises(RateLimited):
            pipeline.accept(normalized(api_channel), channel=api_channel, principal=customer)

    def test_no_agent_for_the_channel_is_a_clear_503(self, api_channel, customer):
        api_channel.default_agent = None
        with pytest.raises(NoRoute) as refused:
            pipeline.accept(normalized(api_channel), channel=api_channel, principal=customer)
        assert refused.value.status == 503

    def test_unknown_sender_becomes_a_customer_with_an_identity(self, api_channel, roles):
        accepted = pipeline.accept(normalized(api_channel, user_id="ext-42"), channel=api_channel)
        identity = ChannelIdentity.objects.get(channel=api_channel, external_id="ext-42")
        assert accepted.message.sender == identity.user
        assert identity.user.role == "customer"
        again = pipeline.accept(normalized(api_channel, user_id="ext-42"), channel=api_channel)
        assert again.message.sender == identity.user  # known identity, same person

    def test_sticks_to_the_conversations_agent(self, api_channel, customer, llm_model):
        from apps.agents.models import Agent

        first = pipeline.accept(normalized(api_channel), channel=api_channel, principal=customer)
        api_channel.default_agent = Agent.objects.create(slug="other", name="Other", model=llm_model)
        second = pipeline.accept(normalized(api_channel, conversation_id=str(first.conversation.pk)),
                                 channel=api_channel, principal=customer)
        assert second.message.agent == first.message.agent


UNSTORABLE = {
    "message": {"text": "a\x00b"},
    "surrogate message": {"text": "\ud83d alone"},
    "user id": {"user_id": "u\x00"},
    "external id": {"external_id": "\udfff"},
    "metadata value": {"metadata": {"k": ["ok", {"deep": "x\x00"}]}},
    "metadata key": {"metadata": {"k\x00": 1}},
    "NaN in metadata": {"metadata": {"score": float("nan")}},
    "Infinity in attachments": {"attachments": [{"size": float("-inf")}]},
    "raw payload": {"raw": {"note": "\ud800"}},
    "face history": {"control": {"client_history": [{"role": "user", "content": "\x00"}]}},
}


@pytest.mark.django_db
@pytest.mark.parametrize("fields", UNSTORABLE.values(), ids=UNSTORABLE.keys())
def test_what_postgresql_cannot_store_is_a_bad_request_and_nothing_is_written(api_channel, customer, fields):
    fields = dict(fields)
    msg = normalized(api_channel, fields.pop("text", "hello"), **fields)
    with pytest.raises(BadRequest):
        pipeline.accept(msg, channel=api_channel, principal=customer)
    assert not Message.objects.exists() and not Conversation.objects.exists()


def test_storable_text_and_json_pass_the_check(api_channel):
    normalized(api_channel, "emoji 😀, CJK 你好, \u2028 and \ufffd", metadata={"x": [1.5, None, True, {"ok": "ä"}]},
               raw={"n": 10**30}).check_storable()


@pytest.mark.parametrize("plain", [frozenset(), frozenset({"raw_sql"})], ids=["statement", "orm"])
def test_lookups_find_the_same_rows_on_both_paths(api_channel, customer, settings, plain):
    """The webhook dedupe and the conversation lookups, hand-built or the ORM's way (raw_sql)."""
    settings.GATEWAY_PLAIN = plain
    first = pipeline.accept(normalized(api_channel, external_id="evt-9", metadata={"thread_id": "t-9"}),
                            channel=api_channel, principal=customer)
    again = pipeline.accept(normalized(api_channel, external_id="evt-9"), channel=api_channel, principal=customer)
    assert again.duplicate is True and again.message.pk == first.message.pk
    assert again.conversation.pk == first.conversation.pk
    in_thread = pipeline.accept(normalized(api_channel, "more", metadata={"thread_id": "t-9"}),
                                channel=api_channel, principal=customer)
    assert in_thread.duplicate is False and in_thread.conversation.pk == first.conversation.pk
    by_id = pipeline.accept(normalized(api_channel, "by id", conversation_id=str(first.conversation.pk)),
                            channel=api_channel, principal=customer)
    assert by_id.conversation.pk == first.conversation.pk
    other = pipeline.accept(normalized(api_channel, "elsewhere", metadata={"thread_id": "t-10"}),
                            channel=api_channel, principal=customer)
    assert other.conversation.pk != first.conversation.pk


@pytest.mark.django_db
@pytest.mark.parametrize("field", ["user_id", "external_id"])
def test_a_platform_id_longer_than_its_column_is_a_bad_request(api_channel, customer, field):
    with pytest.raises(BadRequest, match="limited to 255 characters"):
        pipeline.accept(normalized(api_channel, **{field: "x" * 256}), channel=api_channel, principal=customer)
    accepted = pipeline.accept(normalized(api_channel, **{field: "x" * 255}), channel=api_channel, principal=customer)
    assert getattr(Message.objects.get(pk=accepted.message.pk), {"user_id": "external_user_id"}.get(field, field)) == (
        "x" * 255)


@pytest.mark.services
@pytest.mark.django_db(transaction=True)
def test_first_messages_of_one_thread_at_once_share_one_conversation(api_channel, customer):
    """Eight first messages of one thread, accepted at once on eight connections: one
    conversation, all eight in it (before, each that missed the others started its own)."""
    barrier = threading.Barrier(8)
    accepted, errors = [], []

    def send(n):
        try:
            barrier.wait(timeout=10)
            accepted.append(pipeline.accept(normalized(api_channel, f"m{n}", metadata={"thread_id": "t-race"}),
                                            channel=api_channel, principal=customer))
        except Exception as exc:  # reported below
            errors.append(exc)
        finally:
            if connection.connection is not None:
                connection.connection.close()  # not back to the pool: gone with the thread
            connection.close()

    threads = [threading.Thread(target=send, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    conversation = Conversation.objects.get()
    assert {a.conversation.pk for a in accepted} == {conversation.pk}
    assert conversation.messages.count() == 8

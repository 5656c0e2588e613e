"""The earlier turns a shared conversation shows the model answering a speaker: only those of
agents the speaker may use, also once such an agent was deleted."""
import pytest

from apps.agents.models import Agent, Visibility
from apps.agents.prompt import build_prompt
from apps.conversations.models import Direction, Message, Status
from tests.helpers import send

pytestmark = pytest.mark.django_db


@pytest.fixture
def thread(api_channel, agent, llm_model, customer, employee, admin_user):
    """One conversation shared, as a platform thread is, by an employee (with an internal agent),
    a customer (with the public one) and a person from staff who answered in it."""
    internal = Agent.objects.create(slug="internal", name="Internal", model=llm_model,
                                    visibility=Visibility.INTERNAL, system_prompt="x")
    asked = send(api_channel, employee, "employee: what is the root password")
    conversation = asked.conversation

    def said(direction, text, **fields):
        return Message.objects.create(conversation=conversation, channel=api_channel, direction=direction,
                                      status=Status.SENT if direction == Direction.OUTBOUND else Status.ANSWERED,
                                      text=text, **fields)

    Message.objects.filter(pk=asked.pk).update(agent=internal, status=Status.ANSWERED)
    said(Direction.OUTBOUND, "internal: SECRET hunter2", reply_to=asked, agent=internal, model="fake-gpt")
    mine = said(Direction.INBOUND, "customer: where is my order", sender=customer, agent=agent)
    said(Direction.OUTBOUND, "public: it ships today", reply_to=mine, agent=agent, model="fake-gpt")
    said(Direction.OUTBOUND, "staff: and I checked it myself", reply_to=mine, sender=admin_user)
    now = said(Direction.INBOUND, "customer: thanks", sender=customer, agent=agent)
    return internal, now


def history(message):
    return [turn["content"] for turn in build_prompt(Message.objects.select_related("agent", "sender")
                                                     .get(pk=message.pk))[1:-1]]


def test_the_customer_is_not_shown_the_internal_agents_turns(thread):
    _internal, now = thread
    assert history(now) == ["customer: where is my order", "public: it ships today", "staff: and I checked it myself"]


def test_nor_once_that_agent_was_deleted(thread, agent):
    internal, now = thread
    internal.delete()
    assert history(now) == ["customer: where is my order", "public: it ships today", "staff: and I checked it myself"]
    # The customer's own exchange stays theirs to see, whatever became of the agent that answered.
    Message.objects.filter(agent=agent).exclude(pk=now.pk).update(agent=None)  # as if deleted
    assert history(now) == ["customer: where is my order", "public: it ships today", "staff: and I checked it myself"]


def test_a_private_conversation_keeps_its_answers_when_their_agent_is_replaced(
        api_channel, agent, llm_model, customer, fake_llm):
    """The channel's agent is replaced and the old one deleted: the customer's own conversation
    still shows the model what it answered before."""
    from apps.agents.runtime import agent_run

    first = send(api_channel, customer, "My order number is 4711")
    assert agent_run(first.id).text == "Echo: My order number is 4711"
    api_channel.default_agent = Agent.objects.create(slug="new", name="New", model=llm_model, system_prompt="x")
    api_channel.save()
    agent.delete()
    later = send(api_channel, customer, "What was my order number?", conversation_id=str(first.conversation_id))
    assert history(later) == ["My order number is 4711", "Echo: My order number is 4711"]

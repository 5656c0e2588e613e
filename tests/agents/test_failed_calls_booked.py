"""Every model call is logged and booked as the provider bills it: an error event in a stream, a
response missing its fields, a provider that reports no usage, an agent's max_tokens of 0."""
import pytest
from django.db.models import Sum

from apps.agents.runtime import agent_run
from apps.conversations.models import Message
from apps.logs.models import LLMCall
from apps.quotas import budgets
from apps.quotas.models import UsageDaily
from tests.helpers import send

pytestmark = pytest.mark.django_db


def booked(user) -> dict:
    return UsageDaily.objects.filter(user=user).aggregate(calls=Sum("calls"), tokens=Sum("total_tokens"))


def test_an_error_event_mid_stream_is_a_logged_retried_attempt_billed_for_what_it_sent(
        webchat_channel, customer, settings, fake_llm):
    settings.GATEWAY_LLM_RETRIES = 1
    message = send(webchat_channel, customer, "one two three four five six [[error_event]] [[delay:0.05]]")
    assert agent_run(message.id) is None
    message.refresh_from_db()
    assert message.status == "failed" and message.error_code == "provider_error"
    calls = list(LLMCall.objects.filter(message=message).order_by("attempt"))
    assert [(c.attempt, c.status) for c in calls] == [(1, "error"), (2, "error")]  # retried, as a 5xx is
    assert all("scripted error event" in c.error and c.latency_ms >= 50 for c in calls)
    # Three words went out each time before the error: the provider bills them, and so do the budgets.
    assert all(c.completion_tokens > 0 and c.total_tokens > c.completion_tokens and c.cost > 0 for c in calls)
    assert booked(customer) == {"calls": 2, "tokens": sum(c.total_tokens for c in calls)}


def test_a_response_with_a_null_message_is_a_bad_response_not_a_crash(api_channel, customer, settings, fake_llm):
    settings.GATEWAY_LLM_RETRIES = 0
    message = send(api_channel, customer, "hello [[null_message]]")
    assert agent_run(message.id) is None
    message.refresh_from_db()
    assert message.status == "failed" and message.error_code == "bad_response"
    call = LLMCall.objects.get(message=message)
    assert call.status == "error" and "Unreadable model response" in call.error
    assert booked(customer)["calls"] is None  # nothing was answered: nothing booked
    stream = send(api_channel, customer, "hello again [[null_message]]", control={"stream": True})
    assert agent_run(stream.id) is None
    assert Message.objects.get(pk=stream.pk).error_code == "bad_response"


@pytest.mark.parametrize("stream", [False, True])
def test_a_provider_reporting_no_usage_is_logged_as_booked(api_channel, customer, fake_llm, stream):
    message = send(api_channel, customer, "count these words please [[no_usage]]", control={"stream": stream})
    reply = agent_run(message.id)
    assert reply.text == "Echo: count these words please"
    assert fake_llm.stats()["last_request"].get("stream", False) == stream
    call = LLMCall.objects.get(message=message)
    assert call.completion_tokens == budgets.text_tokens(reply.text) and call.prompt_tokens > 0
    assert call.cost > 0
    # The log row, the reply (what the face reports as usage) and the budgets say the same.
    assert (reply.prompt_tokens, reply.completion_tokens, reply.total_tokens) == (
        call.prompt_tokens, call.completion_tokens, call.total_tokens)
    assert booked(customer) == {"calls": 1, "tokens": call.total_tokens}


def test_an_agents_max_tokens_of_0_sends_what_was_reserved(api_channel, agent, customer, settings, fake_llm):
    settings.GATEWAY_QUOTA_DEFAULT_MAX_TOKENS = 77
    agent.max_tokens = 0
    agent.save()
    reply = agent_run(send(api_channel, customer, "hello").id)
    assert reply is not None and fake_llm.stats()["last_request"]["max_tokens"] == 77


def test_a_stream_cut_off_after_a_tool_call_is_billed_for_it(webchat_channel, tool_agent, customer, settings,
                                                              fake_llm):
    settings.GATEWAY_LLM_RETRIES = 0
    message = send(webchat_channel, customer, 'what time [[tool:current_time {"timezone": "UTC"}]] [[error_event]]')
    assert agent_run(message.id) is None
    call = LLMCall.objects.get(message=message)
    assert call.status == "error" and call.completion_tokens > 0 and call.cost > 0
    assert booked(customer) == {"calls": 1, "tokens": call.total_tokens}

"""Retries with backoff, then the fallback chain, every attempt logged; truncated streams."""

import pytest
from tenacity import RetryCallState

from apps.agents.llm import LLMError
from apps.agents.models import AgentFallback, LLMModel
from apps.agents.orchestrator import llm_backoff, model_chain, same_model_retries
from apps.agents.prompt import build_prompt, trim_history_to_tokens
from apps.agents.runtime import agent_run
from apps.conversations.models import Message
from apps.conversations.realtime import conversation_group
from apps.logs.models import LLMCall
from tests.helpers import Listener, send


@pytest.fixture
def chain(agent, provider):
    qwen = LLMModel.objects.create(provider=provider, name="fake-qwen")
    glm = LLMModel.objects.create(provider=provider, name="fake-glm")
    AgentFallback.objects.create(agent=agent, model=glm, position=2)
    AgentFallback.objects.create(agent=agent, model=qwen, position=1)
    return agent


def attempts(message):
    return list(LLMCall.objects.filter(message=message).order_by("attempt").values_list("attempt", "model", "status"))


@pytest.mark.django_db
class TestFallbacks:
    def test_chain_is_model_then_fallbacks_in_position_order(self, chain):
        assert [m.name for m in model_chain(chain)] == ["fake-gpt", "fake-qwen", "fake-glm"]

    def test_disabled_provider_is_skipped(self, chain, provider):
        other = type(provider).objects.create(slug="off", name="Off", base_url=provider.base_url, enabled=False)
        off_model = LLMModel.objects.create(provider=other, name="fake-gpt")
        AgentFallback.objects.create(agent=chain, model=off_model, position=0)
        assert [m.name for m in model_chain(chain)] == ["fake-gpt", "fake-qwen", "fake-glm"]

    def test_transient_error_is_retried_on_the_same_model(self, api_channel, chain, customer):
        message = send(api_channel, customer, "flaky [[fail:503 times=1]]")
        reply = agent_run(message.id)
        assert reply.text == "Echo: flaky" and reply.model == "fake-gpt"
        assert attempts(message) == [(1, "fake-gpt", "error"), (2, "fake-gpt", "ok")]

    def test_retries_then_the_next_model(self, api_channel, chain, customer, settings):
        settings.GATEWAY_LLM_RETRIES = 1
        message = send(api_channel, customer, "gpt is down [[fail:500 model=fake-gpt]]")
        reply = agent_run(message.id)
        assert reply.model == "fake-qwen" and reply.text == "Echo: gpt is down"
        assert attempts(message) == [(1, "fake-gpt", "error"), (2, "fake-gpt", "error"), (3, "fake-qwen", "ok")]

    def test_rate_limited_model_falls_through_the_whole_chain_in_order(self, api_channel, chain, customer, settings):
        settings.GATEWAY_LLM_RETRIES = 0
        message = send(api_channel, customer, "[[fail:429 model=fake-gpt]] [[fail:429 model=fake-qwen]] hi")
        reply = agent_run(message.id)
        assert reply.model == "fake-glm"
        assert attempts(message) == [(1, "fake-gpt", "error"), (2, "fake-qwen", "error"), (3, "fake-glm", "ok")]

    def test_non_retryable_error_skips_retries_but_not_the_chain(self, api_channel, chain, customer):
        message = send(api_channel, customer, "[[fail:400 model=fake-gpt]] bad for gpt")
        reply = agent_run(message.id)
        assert reply.model == "fake-qwen"
        assert attempts(message) == [(1, "fake-gpt", "error"), (2, "fake-qwen", "ok")]

    def test_every_model_failing_fails_the_message(self, api_channel, chain, customer, settings):
        settings.GATEWAY_LLM_RETRIES = 1
        message = send(api_channel, customer, "all down [[fail:502]]")
        assert agent_run(message.id) is None
        message.refresh_from_db()
        assert message.status == "failed" and message.error_code == "provider_error"
        assert [a[:2] for a in attempts(message)] == [
            (1, "fake-gpt"), (2, "fake-gpt"), (3, "fake-qwen"), (4, "fake-qwen"), (5, "fake-glm"), (6, "fake-glm")]


@pytest.mark.django_db
class TestTruncatedStreams:
    def test_truncation_resets_the_client_and_tries_the_next_model_never_retrying(
        self, webchat_channel, chain, customer
    ):
        message = send(webchat_channel, customer, "one two three four five six [[truncate]]")
        listener = Listener(conversation_group(message.conversation_id))
        assert agent_run(message.id) is None
        message.refresh_from_db()
        assert message.error_code == "truncated_stream"
        assert [a[1:] for a in attempts(message)] == [
            ("fake-gpt", "error"), ("fake-qwen", "error"), ("fake-glm", "error")]
        types = [e["type"] for e in listener.drain()]
        # Each attempt streamed a few pieces, then told the client to discard them.
        assert types.count("chat.reset") == 3 and types[-1] == "chat.error"
        assert types.index("chat.reset") > types.index("chat.delta")
        assert not Message.objects.filter(reply_to=message).exists()

    def test_fallback_after_a_failed_stream_streams_the_whole_answer(self, webchat_channel, chain, customer):
        message = send(webchat_channel, customer, "stream me please [[fail:500 model=fake-gpt]]")
        listener = Listener(conversation_group(message.conversation_id))
        reply = agent_run(message.id)
        events = listener.drain()
        # An error before any piece was sent needs no reset.
        assert "chat.reset" not in [e["type"] for e in events]
        assert "".join(e["delta"] for e in events if e["type"] == "chat.delta") == reply.text
        assert reply.model == "fake-qwen"


def pause_after(failed_attempt: int, error: Exception | None = None) -> float:
    """The pause llm_backoff() asks for after failed attempt number ``failed_attempt``."""
    state = RetryCallState(same_model_retries(), None, (), {})
    state.attempt_number = failed_attempt
    state.set_exception((type(error), error, None) if error else (Exception, Exception(), None))
    return llm_backoff()(state)


class TestBackoff:
    def test_exponential_and_capped(self, settings):
        settings.GATEWAY_LLM_BACKOFF_BASE_SECONDS = 0.5
        settings.GATEWAY_LLM_BACKOFF_MAX_SECONDS = 3
        assert [pause_after(n) for n in range(1, 5)] == [0.5, 1.0, 2.0, 3]

    def test_retry_after_is_honoured_up_to_its_cap(self, settings):
        settings.GATEWAY_LLM_BACKOFF_BASE_SECONDS = 0.5
        settings.GATEWAY_LLM_RETRY_AFTER_MAX_SECONDS = 10

        def rate_limited(seconds):
            return LLMError("rate_limited", "slow down", retryable=True, status=429, retry_after=seconds)

        assert pause_after(1, rate_limited(4)) == 4
        assert pause_after(1, rate_limited(600)) == 10
        assert pause_after(3, rate_limited(0.1)) == 2.0

    def test_each_model_is_tried_once_more_per_retry_then_left(self, settings):
        settings.GATEWAY_LLM_RETRIES = 2
        retrying = same_model_retries()
        calls = []

        def failing():
            calls.append(1)
            raise LLMError("provider_error", "502", retryable=True, status=502)

        with pytest.raises(LLMError):
            retrying(failing)
        assert len(calls) == 3


@pytest.mark.django_db
class TestHistoryWindow:
    def test_window_by_tokens_keeps_the_newest(self):
        assert trim_history_to_tokens(["a" * 40, "b" * 40, "c" * 40], 30) == 2
        assert trim_history_to_tokens(["a" * 400], 30) == 0
        assert trim_history_to_tokens(["x"] * 5, 0) == 5

    def test_prompt_drops_old_messages_beyond_the_token_window(self, api_channel, agent, customer):
        first = send(api_channel, customer, "old " * 100)
        agent_run(first.id)
        second = send(api_channel, customer, "recent", conversation_id=str(first.conversation_id))
        agent_run(second.id)
        third = send(api_channel, customer, "now", conversation_id=str(first.conversation_id))
        agent.history_tokens = 60
        agent.save()
        third.agent.refresh_from_db()
        prompt = build_prompt(Message.objects.select_related("agent").get(pk=third.pk))
        assert [m["content"] for m in prompt] == ["Be brief.", "recent", "Echo: recent", "now"]

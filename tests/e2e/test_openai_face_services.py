"""The OpenAI-compatible face on services: Daphne + Celery worker + Redis channel layer, openai client."""
import openai
import pytest

from apps.agents.models import Agent, AgentFallback, LLMModel, Provider
from apps.connectors.models import Channel
from apps.identities.models import ApiKey
from apps.logs.models import LLMCall

pytestmark = [pytest.mark.services, pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def gateway(services_stack, customer):
    provider = Provider.objects.create(slug="fake", name="Fake", base_url=services_stack.llm_url)
    model = LLMModel.objects.create(provider=provider, name="fake-gpt")
    agent = Agent.objects.create(slug="assistant", name="Assistant", model=model, system_prompt="Be brief.")
    AgentFallback.objects.create(agent=agent, model=LLMModel.objects.create(provider=provider, name="fake-qwen"))
    Channel.objects.create(slug="api", name="API", kind="api", default_agent=agent)
    _key, raw = ApiKey.generate(user=customer)
    return openai.OpenAI(base_url=f"{services_stack.url}/v1", api_key=raw, max_retries=0, timeout=60)


def test_completion_through_the_worker(gateway):
    completion = gateway.chat.completions.create(model="assistant", messages=[{"role": "user", "content": "hi"}])
    assert completion.choices[0].message.content == "Echo: hi"
    assert [m.id for m in gateway.models.list()] == ["assistant"]


def test_stream_through_redis_with_a_fallback(gateway):
    stream = gateway.chat.completions.create(
        model="assistant", stream=True,
        messages=[{"role": "user", "content": "fall back please [[fail:500 model=fake-gpt]]"}],
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Echo: fall back please"
    calls = LLMCall.objects.order_by("attempt")
    assert [(c.model, c.status) for c in calls][-1] == ("fake-qwen", "ok")
    assert [c.model for c in calls if c.status == "error"] == ["fake-gpt"] * 3


def test_a_cut_answer_finishes_with_length_through_the_worker(gateway):
    """On PostgreSQL and Redis: the reply stored cut at the request's max_tokens says so."""
    ask = {"model": "assistant", "messages": [{"role": "user", "content": "one two three four five"}]}
    assert gateway.chat.completions.create(**ask, max_tokens=2).choices[0].finish_reason == "length"
    chunks = list(gateway.chat.completions.create(**ask, max_tokens=2, stream=True))
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["length"]

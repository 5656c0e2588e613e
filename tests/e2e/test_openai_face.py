"""The OpenAI-compatible face, driven by the official openai client against a real Daphne."""
import openai
import pytest

from devtools.stack import http

pytestmark = pytest.mark.e2e


def client_for(stack, role="customer", **options):
    return openai.OpenAI(base_url=f"{stack.url}/v1", api_key=stack.demo["api_keys"][role], max_retries=0,
                         timeout=30, **options)


def fake_stats(stack):
    return http("GET", stack.llm_url.removesuffix("/v1") + "/_fake/stats")[1]


def test_models_are_the_agents_the_key_may_use(embedded_stack):
    assert [m.id for m in client_for(embedded_stack).models.list()] == ["assistant"]
    admin_models = {m.id for m in client_for(embedded_stack, "admin").models.list()}
    assert {"assistant", "internal-helper", "ops"} <= admin_models


def test_a_model_is_retrieved_by_name_and_others_are_not_found_alike(embedded_stack):
    """``client.models.retrieve``: a model the key may use; an admin's or a made-up one is the same
    ``model_not_found``, in OpenAI's error shape, so agent names are not disclosed."""
    client = client_for(embedded_stack)
    model = client.models.retrieve("assistant")
    assert (model.id, model.object, model.owned_by) == ("assistant", "model", "gateway")
    answers = []
    for name in ("ops", "no-such-agent"):
        with pytest.raises(openai.NotFoundError) as info:
            client.models.retrieve(name)
        assert info.value.code == "model_not_found" and info.value.body["type"] == "invalid_request_error"
        answers.append(info.value.body["message"].replace(repr(name), "NAME"))
    assert answers[0] == answers[1]
    assert client_for(embedded_stack, "admin").models.retrieve("ops").id == "ops"


def test_max_tokens_and_temperature_reach_the_model_within_the_agents_bound(embedded_stack):
    from apps.agents.models import Agent

    agents_bound = Agent._meta.get_field("max_tokens").default  # the demo agents keep the default
    client = client_for(embedded_stack)
    ask = {"model": "assistant", "messages": [{"role": "user", "content": "hello sampling"}]}
    client.chat.completions.create(**ask, max_tokens=7, temperature=0.1)
    sent = fake_stats(embedded_stack)["last_request"]
    assert (sent["max_tokens"], sent["temperature"]) == (7, 0.1)
    client.chat.completions.create(**ask, max_completion_tokens=agents_bound + 10_000)
    sent = fake_stats(embedded_stack)["last_request"]
    assert sent["max_tokens"] == agents_bound  # a request never lifts the agent's bound
    assert sent["temperature"] == Agent._meta.get_field("temperature").default
    for bad in ({"max_tokens": 0}, {"max_tokens": 2.5}, {"max_completion_tokens": True}, {"temperature": 2.5},
                {"temperature": "hot"}):
        with pytest.raises(openai.BadRequestError) as info:
            client.chat.completions.create(**ask, **bad)
        assert info.value.body["param"] == next(iter(bad))


def test_an_answer_cut_at_max_tokens_finishes_with_length(embedded_stack):
    """The model stopped at the request's max_tokens: the client is told ``length`` (as OpenAI
    does), streaming or not, not ``stop``, which would pass the cut answer off as complete."""
    client = client_for(embedded_stack)
    ask = {"model": "assistant", "messages": [{"role": "user", "content": "one two three four five"}]}
    cut = client.chat.completions.create(**ask, max_tokens=2)
    assert (cut.choices[0].message.content, cut.choices[0].finish_reason) == ("Echo: one", "length")
    assert cut.usage.completion_tokens == 2
    finishes = [c.choices[0].finish_reason for c in client.chat.completions.create(**ask, max_tokens=2, stream=True)
                if c.choices and c.choices[0].finish_reason]
    assert finishes == ["length"]
    assert client.chat.completions.create(**ask).choices[0].finish_reason == "stop"


def test_completion(embedded_stack):
    completion = client_for(embedded_stack).chat.completions.create(
        model="assistant", messages=[{"role": "user", "content": "hello face"}],
    )
    assert completion.object == "chat.completion" and completion.id.startswith("chatcmpl-")
    assert completion.model == "assistant"
    assert completion.choices[0].message.content == "Echo: hello face"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens > 0


def test_client_history_becomes_the_prompt(embedded_stack):
    client_for(embedded_stack).chat.completions.create(model="assistant", messages=[
        {"role": "system", "content": "Speak like a pirate."},
        {"role": "user", "content": "my name is Ada"},
        {"role": "assistant", "content": "Hello Ada"},
        {"role": "user", "content": [{"type": "text", "text": "what is my name?"}]},
    ])
    sent = fake_stats(embedded_stack)["last_request"]["messages"]
    assert [(m["role"], m["content"]) for m in sent] == [
        ("system", "You are a helpful customer assistant."), ("system", "Speak like a pirate."),
        ("user", "my name is Ada"), ("assistant", "Hello Ada"), ("user", "what is my name?"),
    ]


def test_streaming(embedded_stack):
    stream = client_for(embedded_stack).chat.completions.create(
        model="assistant", messages=[{"role": "user", "content": "stream this answer please"}], stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Echo: stream this answer please"
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) > 1  # really streamed
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens > 0
    assert {c.object for c in chunks} == {"chat.completion.chunk"} and len({c.id for c in chunks}) == 1


def test_bad_key_is_401(embedded_stack):
    bad = openai.OpenAI(base_url=f"{embedded_stack.url}/v1", api_key="gw_nope_nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as info:
        bad.chat.completions.create(model="assistant", messages=[{"role": "user", "content": "hi"}])
    assert info.value.body["type"] == "authentication_error"
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()


def test_unknown_or_forbidden_agent_is_model_not_found(embedded_stack):
    client = client_for(embedded_stack)
    for model in ("no-such-agent", "ops"):  # ops exists but is for admins: not disclosed
        with pytest.raises(openai.NotFoundError) as info:
            client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])
        assert info.value.code == "model_not_found"
        assert info.value.body["type"] == "invalid_request_error"


def test_malformed_requests_are_400_with_the_param(embedded_stack):
    client = client_for(embedded_stack)
    cases = [
        (dict(messages=[]), "messages"),
        (dict(messages=[{"role": "assistant", "content": "last is not the user"}]), "messages"),
        (dict(messages=[{"role": "wizard", "content": "x"}]), "messages[0]"),
        (dict(messages=[{"role": "user", "content": "x"}], n=2), "n"),
        (dict(messages=[{"role": "user", "content": "x"}], tools=[{"type": "function", "function": {"name": "f"}}]),
         "tools"),
    ]
    for kwargs, param in cases:
        with pytest.raises(openai.BadRequestError) as info:
            client.chat.completions.create(model="assistant", **kwargs)
        assert info.value.param == param, kwargs
        assert info.value.body["type"] == "invalid_request_error"
    status, body, _ = http("POST", f"{embedded_stack.url}/v1/chat/completions", ["not", "an", "object"],
                           {"Authorization": f"Bearer {embedded_stack.demo['api_keys']['customer']}"})
    assert status == 400 and set(body["error"]) == {"message", "type", "param", "code"}


def test_model_failure_is_an_openai_server_error(embedded_stack):
    with pytest.raises(openai.InternalServerError) as info:
        client_for(embedded_stack).chat.completions.create(
            model="assistant", messages=[{"role": "user", "content": "break [[fail:500]]"}])
    assert info.value.status_code == 502 and info.value.code == "agent_failed"


def test_stream_failure_raises_in_the_client(embedded_stack):
    stream = client_for(embedded_stack).chat.completions.create(
        model="assistant", messages=[{"role": "user", "content": "break [[fail:503]]"}], stream=True)
    with pytest.raises(openai.APIError) as info:
        list(stream)
    assert info.value.code == "agent_failed"


def test_truncated_stream_is_never_a_complete_answer(embedded_stack):
    stream = client_for(embedded_stack).chat.completions.create(
        model="assistant", messages=[{"role": "user", "content": "one two three four five six [[truncate]]"}],
        stream=True)
    received = []
    with pytest.raises(openai.APIError):
        for chunk in stream:
            if chunk.choices:
                assert chunk.choices[0].finish_reason is None  # never "stop"
                received.append(chunk.choices[0].delta.content or "")
    assert "".join(received) != "Echo: one two three four five six"


USED_UP_BUDGET = """
from django.contrib.auth import get_user_model
from apps.identities.roles import Role, ensure_role_groups
from apps.identities.services import api_key_create
from apps.quotas.models import QuotaPolicy
user = get_user_model().objects.create_user(username="{username}")
user.groups.add(ensure_role_groups()[Role.CUSTOMER])
QuotaPolicy.objects.create(scope="user", user=user, tokens_per_day=5)
print(api_key_create(user=user, actor=None)[1])
"""


def test_a_used_up_budget_is_a_rate_limit_error_with_retry_after(embedded_stack):
    """Four requests at once on a 5-token budget: all admitted at entry (nothing used yet), the
    first run's reservation takes the budget, and the others' runs are refused. Each refusal is
    what the messages API says (429 quota_exceeded, Retry-After), not a server error that the
    official client would retry at once."""
    import uuid
    from concurrent.futures import ThreadPoolExecutor

    raw_key = embedded_stack.stack.manage("shell", "-c", USED_UP_BUDGET.format(
        username=f"budget-{uuid.uuid4().hex[:8]}")).strip().splitlines()[-1]
    client = openai.OpenAI(base_url=f"{embedded_stack.url}/v1", api_key=raw_key, max_retries=0, timeout=30)

    def ask(n):
        try:
            return client.chat.completions.create(
                model="assistant", messages=[{"role": "user", "content": f"spend tokens {n} [[delay:1]]"}])
        except openai.APIStatusError as exc:
            return exc

    with ThreadPoolExecutor(4) as pool:
        outcomes = list(pool.map(ask, range(4)))
    refused = [o for o in outcomes if isinstance(o, Exception)]
    assert len(refused) < 4 and refused
    for error in refused:
        assert isinstance(error, openai.RateLimitError), error
        assert error.code == "quota_exceeded" and error.body["type"] == "rate_limit_error"
        assert int(error.response.headers["Retry-After"]) >= 1

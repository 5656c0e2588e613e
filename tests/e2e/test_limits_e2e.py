"""Limits that hold across processes: real Daphne processes and Celery workers on one Redis.

- Two Daphne processes hammered with one user's requests admit exactly that user's rate.
- Celery workers making many model calls at once never overshoot a token quota by more than one
  call's estimate; every reservation is settled, and the rollup matches the model call log.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from apps.agents.models import Agent, LLMModel, Provider
from apps.agents.prompt import build_prompt
from apps.connectors.models import Channel
from apps.conversations import pipeline
from apps.conversations.models import Message
from apps.conversations.normalized import NormalizedMessage
from apps.core.errors import QuotaExceeded
from apps.identities.models import ApiKey
from apps.logs.models import LLMCall
from apps.quotas.budgets import estimate_prompt_tokens
from apps.quotas.models import QuotaPolicy, UsageDaily
from apps.quotas.policies import user_limits
from apps.quotas.selectors import budget_states
from devtools.stack import Stack, base_env, database_url, http
from tests.helpers import wait_until

pytestmark = [pytest.mark.services, pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def stack(settings):
    """Processes on the test database and Redis, sharing this test's limit keys."""
    stack = Stack(base_env(
        DATABASE_URL=database_url(settings.DATABASES["default"]), REDIS_URL=settings.REDIS_URL,
        CELERY_BROKER_URL=settings.CELERY_BROKER_URL,
        GATEWAY_LIMIT_KEY_PREFIX=settings.GATEWAY_LIMIT_KEY_PREFIX,
    ))
    yield stack
    stack.stop()


@pytest.fixture
def gateway(fake_llm):
    provider = Provider.objects.create(slug="fake", name="Fake", base_url=fake_llm.base_url, timeout_seconds=30)
    model = LLMModel.objects.create(provider=provider, name="fake-gpt")
    agent = Agent.objects.create(slug="assistant", name="Assistant", model=model, system_prompt="Be brief.",
                                 max_tokens=40)
    return Channel.objects.create(slug="api", name="API", kind="api", default_agent=agent)


def test_two_daphne_processes_admit_exactly_the_users_rate(stack, gateway, customer):
    QuotaPolicy.objects.create(scope="user", user=customer, request_rate="25/d")
    _key, raw = ApiKey.generate(user=customer)
    urls = [stack.daphne(), stack.daphne()]
    auth = {"Authorization": f"Bearer {raw}"}

    def post(n):
        return http("POST", f"{urls[n % 2]}/api/v1/messages", {"message": f"flood {n}"}, auth)

    with ThreadPoolExecutor(max_workers=32) as pool:
        answers = list(pool.map(post, range(80)))
    statuses = [status for status, _body, _headers in answers]
    assert statuses.count(202) == 25, statuses
    assert statuses.count(429) == 55
    assert {body["error"]["code"] for status, body, _ in answers if status == 429} == {"rate_limited"}
    assert Message.objects.filter(sender=customer).count() == 25


def test_parallel_model_calls_never_overshoot_a_token_quota_by_more_than_one_estimate(
    stack, gateway, customer, fake_llm, settings
):
    # Any worker of the run may take these tasks (the session stack's too): everyone counts on the
    # default keys, which this user's id keeps apart from other tests.
    settings.GATEWAY_LIMIT_KEY_PREFIX = stack.env["GATEWAY_LIMIT_KEY_PREFIX"] = "gw"
    limit = 600
    QuotaPolicy.objects.create(scope="user", user=customer, tokens_per_day=limit)
    # Every answer uses the agent's whole max_tokens (40 words), so real usage ≈ the estimate.
    answer = " ".join(["word"] * gateway.default_agent.max_tokens)
    messages, refused_at_entry = [], 0
    for n in range(30):
        msg = NormalizedMessage(channel="api", channel_id="api", user_id=str(customer.pk),
                                message=f"question {n} [[delay:0.4]] [[reply:{answer}]]")
        try:
            messages.append(pipeline.accept(msg, channel=gateway, principal=customer).message)  # queued to Redis
        except QuotaExceeded:
            # A worker already running (the session's) may spend the quota while we submit: from
            # then on the pipeline refuses at entry, which is the rule working, not a crash.
            refused_at_entry += 1
    estimate = max(estimate_prompt_tokens(build_prompt(m)) for m in messages) + gateway.default_agent.max_tokens
    stack.worker(concurrency=8)
    stack.worker(concurrency=8)

    assert wait_until(lambda: not Message.objects.filter(pk__in=[m.pk for m in messages],
                                                         status__in=["accepted", "processing"]).exists(),
                      timeout=120, interval=0.2)
    outcomes = dict(Message.objects.filter(pk__in=[m.pk for m in messages]).values_list("pk", "status"))
    assert set(outcomes.values()) <= {"answered", "failed"}, outcomes  # nothing lost or stuck
    spent = sum(LLMCall.objects.filter(user=customer, status="ok").values_list("total_tokens", flat=True))
    answered = list(outcomes.values()).count("answered")
    refused = Message.objects.filter(pk__in=outcomes, status="failed")
    assert answered > 0
    assert refused_at_entry + refused.count() > 0  # the quota did stop some of the 30
    assert spent <= limit + estimate, (spent, limit, estimate)
    assert set(refused.values_list("error_code", flat=True)) <= {"quota_exceeded"}
    [day] = budget_states(user_limits(customer))
    assert (day["used"], day["reserved"]) == (spent, 0)  # every reservation settled or released
    assert sum(UsageDaily.objects.filter(user=customer).values_list("total_tokens", flat=True)) == spent

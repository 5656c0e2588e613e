"""Metrics from real processes: Daphne's /metrics after real requests, and a Celery worker's own
endpoint (GATEWAY_WORKER_METRICS_PORT) after agent runs, under the threads and the gevent pool."""
from __future__ import annotations

import os
import time
from types import SimpleNamespace

import pytest
from prometheus_client.parser import text_string_to_metric_families

from apps.agents.models import Agent, LLMModel, Provider
from apps.connectors.models import Channel
from apps.identities.models import ApiKey
from devtools.stack import BIN, free_port, http

pytestmark = pytest.mark.e2e

TOKEN = "e2e-scrape-token"
MODEL_OK = {"model": "fake-gpt", "provider": "fake", "status": "ok"}


def samples(text: str) -> dict[tuple, float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(scraped: dict, name: str, **labels) -> float:
    return scraped.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture(params=["threads", "gevent"])
def metered(request, services_stack, customer):
    """A worker of the given pool serving its metrics on a port of its own, and a Daphne with a
    metrics token, both on a queue of their own (the session worker does not take these runs)."""
    pool = request.param
    if pool == "gevent":
        pytest.importorskip("gevent")
    stack = services_stack.stack
    worker_port = free_port()
    env = {"GATEWAY_AGENT_QUEUE": f"e2e-metrics-{pool}", "GATEWAY_METRICS_TOKEN": TOKEN,
           "GATEWAY_LIMIT_KEY_PREFIX": f"m{os.urandom(6).hex()}", "GATEWAY_USER_RATE": "1/d"}
    worker = stack.spawn(f"celery-{pool}", [
        str(BIN / "celery"), "-A", "gateway_project", "worker", "-P", pool, "-c", "8", "-Q", env["GATEWAY_AGENT_QUEUE"],
        "-l", "INFO", "--without-mingle", "--without-gossip", "--without-heartbeat",
    ], env={**env, "GATEWAY_WORKER_METRICS_PORT": str(worker_port)})
    daphne = None
    try:
        worker.wait_for_log(r"ready\.", timeout=60)
        url = stack.daphne(env=env)
        daphne = stack.processes[-1]
        provider = Provider.objects.create(slug="fake", name="Fake", base_url=services_stack.llm_url)
        model = LLMModel.objects.create(provider=provider, name="fake-gpt")
        agent = Agent.objects.create(slug="assistant", name="Assistant", model=model, system_prompt="Be brief.")
        Channel.objects.create(slug="api", name="API", kind="api", default_agent=agent)
        _key, raw = ApiKey.generate(user=customer)
        yield SimpleNamespace(url=url, queue=env["GATEWAY_AGENT_QUEUE"], worker_url=f"http://127.0.0.1:{worker_port}/metrics",
                              auth={"Authorization": f"Bearer {raw}"}, worker=worker)
    except Exception:
        print(stack.logs())
        raise
    finally:
        if daphne is not None:
            daphne.stop()
        worker.stop()


def scrape_daphne(metered) -> dict:
    return scrape(metered.url)


def scrape(url: str) -> dict:
    status, text, headers = http("GET", f"{url}/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert status == 200, text
    assert headers["Content-Type"].startswith("text/plain")
    return samples(text)


def scrape_worker(metered) -> dict:
    status, text, _headers = http("GET", metered.worker_url)
    assert status == 200, text
    return samples(text)


@pytest.mark.services
@pytest.mark.django_db(transaction=True)
def test_daphne_and_the_worker_each_serve_what_they_counted(metered):
    daphne_before, worker_before = scrape_daphne(metered), scrape_worker(metered)

    status, body, _ = http("POST", f"{metered.url}/api/v1/messages", {"message": "count me", "wait": 30},
                           metered.auth)
    assert status == 200, body
    assert http("POST", f"{metered.url}/api/v1/messages", {"message": ""}, metered.auth)[0] == 400
    assert http("POST", f"{metered.url}/api/v1/messages", {"message": "too many"}, metered.auth)[0] == 429

    daphne = scrape_daphne(metered)

    def grew(name, **labels):
        return value(daphne, name, **labels) - value(daphne_before, name, **labels)

    assert grew("gateway_requests_total", channel="api", status="200") == 1
    assert grew("gateway_requests_total", channel="api", status="400") == 1
    assert grew("gateway_requests_total", channel="api", status="429") == 1
    assert grew("gateway_rejections_total", channel="api", reason="invalid_request") == 1
    assert grew("gateway_rejections_total", channel="api", reason="rate_limited") == 1
    assert grew("gateway_request_latency_seconds_count", channel="api") == 3
    assert grew("gateway_limit_rejections_total", code="rate_limited", limit="user", channel_kind="api") == 1
    assert ("gateway_queue_depth", (("queue", metered.queue),)) in daphne
    # The model calls happen in the worker: this Daphne counted none of them.
    assert value(daphne, "gateway_model_calls_total", **MODEL_OK) == 0

    # The worker records the call just before it delivers the reply: wait for it with a deadline.
    deadline = time.monotonic() + 30
    while True:
        worker = scrape_worker(metered)
        calls = value(worker, "gateway_model_calls_total", **MODEL_OK) - value(
            worker_before, "gateway_model_calls_total", **MODEL_OK)
        if calls >= 1 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert calls == 1, metered.worker.log()[-3000:]
    for kind in ("prompt", "completion"):
        assert value(worker, "gateway_tokens_total", model="fake-gpt", kind=kind) > value(
            worker_before, "gateway_tokens_total", model="fake-gpt", kind=kind)
    assert value(worker, "gateway_model_latency_seconds_count", model="fake-gpt") - value(
        worker_before, "gateway_model_latency_seconds_count", model="fake-gpt") == 1
    assert value(worker, "gateway_requests_total", channel="api", status="200") == 0  # Daphne's, not its own


def test_the_embedded_default_serves_its_in_process_runs(embedded_stack):
    """`make run`: no worker; the agent runs in the Daphne process, so its /metrics has them."""
    url = embedded_stack.stack.daphne(env={"GATEWAY_METRICS_TOKEN": TOKEN})  # a fresh process: counts from 0
    daphne = embedded_stack.stack.processes[-1]
    try:
        key = embedded_stack.demo["api_keys"]["customer"]
        status, body, _ = http("POST", f"{url}/api/v1/messages", {"message": "metered", "wait": 20},
                               {"Authorization": f"Bearer {key}"})
        assert status == 200, body
        scraped = scrape(url)
        assert value(scraped, "gateway_requests_total", channel="api", status="200") == 1
        model = body["reply"]["model"]
        calls = {labels: v for (name, labels), v in scraped.items()
                 if name == "gateway_model_calls_total" and ("model", model) in labels}
        assert list(calls.values()) == [1] and (("status", "ok") in next(iter(calls)))
        assert value(scraped, "gateway_tokens_total", model=model, kind="completion") > 0
        assert ("gateway_queue_depth", (("queue", "gateway"),)) in scraped
    finally:
        daphne.stop()

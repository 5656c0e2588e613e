"""GET /metrics and a worker's endpoint: Prometheus text with requests, rejections, latency histograms,
tokens, cost, limit refusals and the queue depth, from prometheus-client's registry in this process."""
import socket
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families
from rest_framework.test import APIClient

from apps.agents.runtime import agent_run
from apps.conversations.models import Message
from devtools.stack import free_port

METRICS_TOKEN = "scrape-token"


@pytest.fixture(autouse=True)
def _metrics_token(settings):
    settings.GATEWAY_METRICS_TOKEN = METRICS_TOKEN


def scrape(client) -> dict[tuple, float]:
    response = client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {METRICS_TOKEN}")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.content.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples, name, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.mark.django_db
class TestMetrics:
    def test_counts_requests_rejections_model_calls_tokens_and_cost(
        self, client, api_key_for, customer, api_channel, fake_llm
    ):
        before = scrape(client)
        api = APIClient()
        api.credentials(HTTP_AUTHORIZATION=f"Bearer {api_key_for(customer)}")
        accepted = api.post("/api/v1/messages", {"message": "count me"}, format="json")
        assert accepted.status_code == 202
        assert api.post("/api/v1/messages", {"message": ""}, format="json").status_code == 400
        agent_run(Message.objects.get(pk=accepted.json()["message_id"]).id)
        after = scrape(client)

        def grew(name, **labels):
            return value(after, name, **labels) - value(before, name, **labels)

        assert grew("gateway_requests_total", channel="api", status="202") == 1
        assert grew("gateway_requests_total", channel="api", status="400") == 1
        assert grew("gateway_rejections_total", channel="api", reason="invalid_request") == 1
        assert grew("gateway_request_latency_seconds_count", channel="api") == 2
        assert grew("gateway_request_latency_seconds_bucket", channel="api", le="+Inf") == 2
        assert grew("gateway_model_calls_total", model="fake-gpt", provider="fake", status="ok") == 1
        assert grew("gateway_model_latency_seconds_count", model="fake-gpt") == 1
        assert grew("gateway_tokens_total", model="fake-gpt", kind="prompt") > 0
        assert grew("gateway_tokens_total", model="fake-gpt", kind="completion") > 0
        assert grew("gateway_cost_total", model="fake-gpt") > 0
        assert ("gateway_queue_depth", (("queue", "gateway"),)) in after

    def test_histogram_buckets_are_cumulative(self, client):
        from apps.logs.metrics import REQUEST_LATENCY_BUCKETS_S, request_observed

        channel = f"histogram-{id(self)}"  # a label of this test only
        for latency_ms in (20, 20, 300, 90_000):  # 0.02 s twice, 0.3 s, and past the last bound
            request_observed(channel=channel, status_code=200, rejection="", latency_ms=latency_ms)
        samples = scrape(client)
        counts = {le: value(samples, "gateway_request_latency_seconds_bucket", channel=channel, le=le)
                  for le in [str(b) for b in REQUEST_LATENCY_BUCKETS_S] + ["+Inf"]}
        assert counts["0.01"] == 0 and counts["0.025"] == 2 and counts["0.25"] == 2
        assert counts["0.5"] == 3 and counts["60.0"] == 3 and counts["+Inf"] == 4
        assert list(counts.values()) == sorted(counts.values())  # never decreasing
        assert value(samples, "gateway_request_latency_seconds_count", channel=channel) == 4
        assert value(samples, "gateway_request_latency_seconds_sum", channel=channel) == pytest.approx(90.34)

    def test_token_setting_refuses_a_scrape_without_it(self, client, settings):
        settings.GATEWAY_METRICS_TOKEN = "s3cret"
        assert client.get("/metrics").status_code == 401
        assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer wrong").status_code == 401
        assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer s3cret").status_code == 200

    def test_without_a_token_only_debug_opens_it(self, client, settings):
        settings.GATEWAY_METRICS_TOKEN = ""
        settings.DEBUG = False
        refused = client.get("/metrics")
        assert refused.status_code == 403 and refused.json()["error"]["code"] == "metrics_disabled"
        settings.DEBUG = True
        assert client.get("/metrics").status_code == 200


@pytest.mark.services
@pytest.mark.django_db
def test_queue_depth_reads_the_celery_queue_in_redis(client, settings):
    import redis

    settings.GATEWAY_AGENT_DISPATCH = "celery"
    broker = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    broker.delete("gateway")
    broker.rpush("gateway", b"{}", b"{}", b"{}")
    try:
        assert value(scrape(client), "gateway_queue_depth", queue="gateway") == 3
    finally:
        broker.delete("gateway")


class TestServedFromThisProcess:
    def test_the_limit_steps_counters_are_served(self, client, settings, api_key_for, customer, api_channel):
        """apps/quotas declares its counters in prometheus-client's default registry: /metrics serves them."""
        settings.GATEWAY_USER_RATE = "1/m"
        before = scrape(client)
        api = APIClient()
        api.credentials(HTTP_AUTHORIZATION=f"Bearer {api_key_for(customer)}")
        assert api.post("/api/v1/messages", {"message": "one"}, format="json").status_code == 202
        assert api.post("/api/v1/messages", {"message": "two"}, format="json").status_code == 429
        after = scrape(client)
        labels = {"code": "rate_limited", "limit": "user", "channel_kind": "api"}
        assert value(after, "gateway_limit_rejections_total", **labels) - value(
            before, "gateway_limit_rejections_total", **labels) == 1
        # Declared there too; no sample until a limit store fails.
        assert "# TYPE gateway_limit_backend_errors_total counter" in scrape_text(client)

    def test_an_unreachable_broker_drops_only_the_queue_depth(self, client, settings):
        """The counters are this process's own: a broker that is down must not hide them."""
        from apps.logs.metrics import request_observed

        settings.CELERY_BROKER_URL = "redis://127.0.0.1:1/0"  # nothing listens there
        channel = f"broker-down-{id(self)}"
        request_observed(channel=channel, status_code=200, rejection="", latency_ms=5)
        samples = scrape(client)
        assert value(samples, "gateway_requests_total", channel=channel, status="200") == 1
        assert not any(name == "gateway_queue_depth" for name, _labels in samples)


def scrape_text(client) -> str:
    return client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {METRICS_TOKEN}").content.decode()


class TestWorkerEndpoint:
    """``serve_worker_metrics``: what a Celery worker calls when it is ready (``serve_when_worker_ready``)."""

    def get(self, port: int) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            return response.read().decode()

    def test_serves_this_processs_registry_on_the_configured_port(self, settings):
        from celery.concurrency.thread import TaskPool as ThreadsPool

        from apps.logs.metrics import llm_call_observed, serve_worker_metrics
        from apps.logs.models import LLMCall

        settings.GATEWAY_WORKER_METRICS_PORT = free_port()
        server = serve_worker_metrics(ThreadsPool)
        assert server is not None
        try:
            model = f"worker-endpoint-{id(self)}"
            llm_call_observed(LLMCall(model=model, provider="fake", status="ok", latency_ms=120,
                                      prompt_tokens=7, completion_tokens=3, cost=0))
            families = {f.name: f for f in text_string_to_metric_families(self.get(server.server_port))}
            calls = {tuple(sorted(s.labels.items())): s.value for s in families["gateway_model_calls"].samples}
            assert calls[(("model", model), ("provider", "fake"), ("status", "ok"))] == 1
            tokens = {s.labels["kind"]: s.value for s in families["gateway_tokens"].samples
                      if s.labels["model"] == model}
            assert tokens == {"prompt": 7, "completion": 3}
            assert "gateway_limit_rejections" in families
        finally:
            server.shutdown()
            server.server_close()

    def test_off_unless_a_port_is_set_and_never_under_prefork(self, settings):
        from celery.concurrency.prefork import TaskPool as PreforkPool
        from celery.concurrency.thread import TaskPool as ThreadsPool

        from apps.logs.metrics import serve_worker_metrics

        settings.GATEWAY_WORKER_METRICS_PORT = 0
        assert serve_worker_metrics(ThreadsPool) is None
        settings.GATEWAY_WORKER_METRICS_PORT = port = free_port()
        assert serve_worker_metrics(PreforkPool) is None  # the counters would be in the children
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", port))  # nobody took the port

    def test_a_taken_port_is_logged_and_the_worker_goes_on(self, settings, caplog):
        from celery.concurrency.thread import TaskPool as ThreadsPool

        from apps.logs.metrics import serve_worker_metrics

        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            settings.GATEWAY_WORKER_METRICS_PORT = taken.getsockname()[1]
            assert serve_worker_metrics(ThreadsPool) is None
        assert "worker metrics could not listen" in caplog.text

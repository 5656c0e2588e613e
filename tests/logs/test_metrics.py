"""GET /metrics: Prometheus text with requests, rejections, latency histograms, tokens, cost, queue."""
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families
from rest_framework.test import APIClient

from apps.agents.runtime import agent_run
from apps.conversations.models import Message

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


@pytest.mark.services
class TestWrittenToRedisInBatches:
    """Each process adds its observations up and writes them to the shared hash in one round trip."""

    def field(self, channel):
        from apps.logs.metrics import _field

        return _field("gateway_requests", {"channel": channel, "status": "200"})

    def written(self, channel) -> float:
        from apps.logs.buffer import redis_client
        from apps.logs.metrics import METRICS_KEY

        return float(redis_client().hget(METRICS_KEY, self.field(channel)) or 0)

    def test_the_flusher_thread_writes_them_without_a_scrape(self):
        from apps.logs.metrics import request_observed

        channel = f"batched-{id(self)}"
        for _ in range(3):
            request_observed(channel=channel, status_code=200, rejection="", latency_ms=5)
        deadline = time.monotonic() + 30
        while self.written(channel) < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert self.written(channel) == 3

    def test_a_write_that_fails_is_kept_for_the_next(self, monkeypatch, settings):
        import redis

        from apps.logs import buffer
        from apps.logs.metrics import _RedisStore

        settings.GATEWAY_METRICS_FLUSH_SECONDS = 3600  # this test writes; the thread sleeps through it
        channel = f"kept-{id(self)}"
        store = _RedisStore()
        store.add({self.field(channel): 2.0})
        monkeypatch.setattr(buffer, "_redis", redis.Redis(port=1, socket_connect_timeout=0.2))  # nothing listens
        with pytest.raises(redis.ConnectionError):
            store.flush()
        monkeypatch.undo()
        store.add({self.field(channel): 1.0})
        store.flush()
        assert self.written(channel) == 3

"""Prometheus metrics for ``GET /metrics``, shared by every Daphne process and Celery worker.

Choice: counters and histogram buckets live in one Redis hash (``HINCRBYFLOAT``; a histogram
observation touches only its own bucket and the sum) and ``/metrics`` renders them with
prometheus-client's exposition code. Each process adds its observations up and writes them in one
pipelined round trip a second (GATEWAY_METRICS_FLUSH_SECONDS), so a scrape may be that far behind.
prometheus-client's multiprocess mode only aggregates processes that share a directory on one
machine; the gateway scales out to several machines behind a load balancer, where a scrape reaches
any one process. With the counters in Redis every scrape returns the totals of the whole
deployment. (A Redis restart resets them; Prometheus treats that as a counter reset.)
On the embedded default (one process, no Redis) the same counters are kept in this process.

Recording never raises: metrics must not break a request.
"""
from __future__ import annotations

import functools
import hmac
import json
import logging
import threading
from collections import defaultdict

from django.conf import settings
from django.http import HttpResponse, JsonResponse
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from .batching import Batcher

logger = logging.getLogger(__name__)

METRICS_KEY = "gateway:metrics"

REQUEST_LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
MODEL_LATENCY_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0, 120.0)

# name → (type, help, label names). Counters are named without the "_total" suffix here.
FAMILIES: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "gateway_requests": ("counter", "Inbound requests at the entry points.", ("channel", "status")),
    "gateway_rejections": ("counter", "Refused inbound requests by reason (the error code).", ("channel", "reason")),
    "gateway_request_latency_seconds": (
        "histogram", "Time an entry point spent on a request (pipeline included).", ("channel",)),
    "gateway_model_calls": ("counter", "Model call attempts.", ("model", "provider", "status")),
    "gateway_model_latency_seconds": ("histogram", "Model call latency.", ("model",)),
    "gateway_tokens": ("counter", "Tokens used by model calls.", ("model", "kind")),
    "gateway_cost": ("counter", "Cost of model calls, in the providers' price unit.", ("model",)),
}


class _MemoryStore:
    def __init__(self):
        self.values: dict[str, float] = defaultdict(float)
        self.lock = threading.Lock()

    def add(self, increments: dict[str, float]) -> None:
        with self.lock:
            for field, amount in increments.items():
                self.values[field] += amount

    def read(self) -> dict[str, float]:
        with self.lock:
            return dict(self.values)


class _RedisStore:
    """Increments add up in the process and reach Redis in one pipelined round trip at most every
    GATEWAY_METRICS_FLUSH_SECONDS (apps/logs/batching.py); a scrape writes its own process's first."""

    def __init__(self):
        self.batch = Batcher("metrics", empty=lambda: defaultdict(float), fold=_fold_increments,
                             merge=_merge_increments, write=self._write,
                             interval=lambda: settings.GATEWAY_METRICS_FLUSH_SECONDS)

    def add(self, increments: dict[str, float]) -> None:
        self.batch.add(increments)

    def flush(self) -> None:
        self.batch.flush()

    @staticmethod
    def _write(increments: dict[str, float]) -> None:
        from .buffer import redis_client

        pipe = redis_client().pipeline(transaction=False)
        for field, amount in increments.items():
            pipe.hincrbyfloat(METRICS_KEY, field, amount)
        pipe.execute()

    def read(self) -> dict[str, float]:
        from .buffer import redis_client

        self.batch.flush_quietly()
        return {k.decode(): float(v) for k, v in redis_client().hgetall(METRICS_KEY).items()}


def _fold_increments(pending: dict[str, float], increments: dict[str, float]) -> None:
    for field, amount in increments.items():
        pending[field] += amount


def _merge_increments(older: dict[str, float], newer: dict[str, float]) -> dict[str, float]:
    _fold_increments(older, newer)
    return older


_store = None


def store():
    global _store
    if _store is None:
        _store = _RedisStore() if settings.REDIS_URL else _MemoryStore()
    return _store


def _field(name: str, labels: dict[str, str]) -> str:
    return _field_of(name, tuple(sorted(labels.items())))


@functools.lru_cache(maxsize=4096)
def _field_of(name: str, items: tuple) -> str:
    return json.dumps([name, items], separators=(",", ":"))


def _counter(increments: dict, name: str, labels: dict, amount: float = 1.0) -> None:
    field = _field(name, labels)
    increments[field] = increments.get(field, 0.0) + amount


def _histogram(increments: dict, name: str, labels: dict, value: float, bounds) -> None:
    """One observation: only the bucket it falls in, and the sum, are stored (two fields, not one
    per bound); ``StoreCollector`` adds the buckets up into Prometheus' cumulative form."""
    bound = next((repr(float(b)) for b in bounds if value <= b), "+Inf")
    _counter(increments, name + "_bucket", {**labels, "le": bound})
    _counter(increments, name + "_sum", labels, value)


def _add(increments: dict) -> None:
    try:
        store().add(increments)
    except Exception:
        logger.warning("metrics update failed", exc_info=True)


def request_observed(*, channel: str, status_code: int, rejection: str, latency_ms: int) -> None:
    increments: dict[str, float] = {}
    _counter(increments, "gateway_requests", {"channel": channel, "status": str(status_code)})
    if rejection:
        _counter(increments, "gateway_rejections", {"channel": channel, "reason": rejection})
    _histogram(increments, "gateway_request_latency_seconds", {"channel": channel}, latency_ms / 1000,
               REQUEST_LATENCY_BUCKETS_S)
    _add(increments)


def llm_call_observed(call) -> None:
    """Count one LLMCall row (tokens, cost, latency)."""
    increments: dict[str, float] = {}
    _counter(increments, "gateway_model_calls",
             {"model": call.model, "provider": call.provider, "status": call.status})
    if call.status == "ok":
        _histogram(increments, "gateway_model_latency_seconds", {"model": call.model},
                   (call.latency_ms or 0) / 1000, MODEL_LATENCY_BUCKETS_S)
        _counter(increments, "gateway_tokens", {"model": call.model, "kind": "prompt"}, call.prompt_tokens)
        _counter(increments, "gateway_tokens", {"model": call.model, "kind": "completion"}, call.completion_tokens)
        _counter(increments, "gateway_cost", {"model": call.model}, float(call.cost or 0))
    _add(increments)


# --- exposition --------------------------------------------------------------------------------


class StoreCollector:
    """Turns the stored fields back into Prometheus metric families."""

    def collect(self):
        values = store().read()
        counters: dict[str, list] = defaultdict(list)
        hist: dict[str, dict] = defaultdict(lambda: defaultdict(lambda: {"buckets": {}, "sum": 0.0}))
        for field, value in values.items():
            try:
                name, items = json.loads(field)
            except ValueError:
                continue
            labels = dict(items)
            for base, (kind, _help, _names) in FAMILIES.items():
                if kind == "counter" and name == base:
                    counters[base].append((labels, value))
                elif kind == "histogram" and name.startswith(base + "_"):
                    part = name[len(base) + 1:]
                    le = labels.pop("le", None)
                    series = hist[base][tuple(sorted(labels.items()))]
                    if part == "bucket" and le is not None:
                        series["buckets"][le] = value
                    elif part == "sum":
                        series["sum"] = value
        for base, (kind, help_text, label_names) in FAMILIES.items():
            if kind == "counter":
                family = CounterMetricFamily(base, help_text, labels=label_names)
                for labels, value in counters.get(base, []):
                    family.add_metric([labels.get(n, "") for n in label_names], value)
            else:
                family = HistogramMetricFamily(base, help_text, labels=label_names)
                for key, series in hist.get(base, {}).items():
                    labels = dict(key)
                    family.add_metric([labels.get(n, "") for n in label_names],
                                      _cumulative(series["buckets"], HISTOGRAM_BOUNDS[base]), series["sum"])
            yield family
        depth = GaugeMetricFamily("gateway_queue_depth", "Agent runs waiting in the queue.", labels=["queue"])
        depth.add_metric([settings.CELERY_TASK_DEFAULT_QUEUE], queue_depth())
        yield depth


HISTOGRAM_BOUNDS = {
    "gateway_request_latency_seconds": REQUEST_LATENCY_BUCKETS_S,
    "gateway_model_latency_seconds": MODEL_LATENCY_BUCKETS_S,
}


def _cumulative(counts: dict[str, float], bounds) -> list[tuple[str, float]]:
    """Per-bucket counts (by "le") → Prometheus buckets: each counts every observation ≤ its bound."""
    total, buckets = 0.0, []
    for le in [repr(float(b)) for b in bounds] + ["+Inf"]:
        total += counts.get(le, 0.0)
        buckets.append((le, total))
    return buckets


def queue_depth() -> int:
    """Messages waiting in the Celery queue (kombu's Redis list, priority sub-lists included)."""
    queue = settings.CELERY_TASK_DEFAULT_QUEUE
    if settings.GATEWAY_AGENT_DISPATCH == "celery" and settings.CELERY_BROKER_URL.startswith("redis"):
        import redis

        client = redis.Redis.from_url(settings.CELERY_BROKER_URL, socket_timeout=2)
        try:
            sep = "\x06\x16"
            names = [queue] + [f"{queue}{sep}{p}" for p in (1, 2, 3, 4, 5, 6, 7, 8, 9)]
            pipe = client.pipeline(transaction=False)
            for name in names:
                pipe.llen(name)
            return int(sum(pipe.execute()))
        finally:
            client.close()
    from apps.agents import dispatch

    pool = getattr(dispatch, "_embedded_pool", None)
    return pool._work_queue.qsize() if pool is not None else 0


def metrics_view(request):
    """``GET /metrics``: Prometheus text format, for a scraper holding GATEWAY_METRICS_TOKEN
    (``Authorization: Bearer <token>``; Prometheus' ``authorization`` / ``bearer_token`` setting).

    The counters reveal traffic, models and spend, so the endpoint is closed by default: without a
    token it answers only when DEBUG is on (a laptop), and 403 otherwise.
    """
    token = settings.GATEWAY_METRICS_TOKEN
    if token:
        given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(given.encode(), token.encode()):
            return _error(401, "unauthorized", "A metrics token is required: Authorization: Bearer <token>.",
                          headers={"WWW-Authenticate": "Bearer"})
    elif not settings.DEBUG:
        return _error(403, "metrics_disabled",
                      "Metrics are closed: set GATEWAY_METRICS_TOKEN and scrape with it as a bearer token.")
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector())
    try:
        body = generate_latest(registry)
    except Exception:
        logger.exception("metrics rendering failed")
        return HttpResponse("metrics unavailable\n", status=503, content_type="text/plain")
    return HttpResponse(body, content_type=CONTENT_TYPE_LATEST)


def _error(status: int, code: str, message: str, headers: dict | None = None) -> JsonResponse:
    return JsonResponse({"error": {"code": code, "message": message}}, status=status, headers=headers)

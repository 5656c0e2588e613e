"""Prometheus metrics: prometheus-client's registry, one per process.

Each process counts in its own memory (no I/O on the request path) and serves its own counters:
Daphne at ``GET /metrics`` (this module's ``metrics_view``), a Celery worker on
GATEWAY_WORKER_METRICS_PORT (``serve_worker_metrics``, prometheus-client's ``start_http_server``).
Prometheus scrapes every process and adds them up (why: docs/decisions/prometheus-metrics.md).
On the embedded default the agent runs happen in the server process, so ``/metrics`` has them all.
The queue depth is cluster-wide: ``/metrics`` reads it from the broker on each scrape, through a
collector the agents register in ``SCRAPE_REGISTRY`` (logs imports no agent module).

``/metrics`` serves prometheus-client's default registry, so counters that other apps declare
there (``apps/quotas/metrics.py``) are served too. Recording never raises: metrics must not break
a request.
"""
from __future__ import annotations

import hmac
import logging
from wsgiref.simple_server import WSGIServer

from celery.signals import worker_ready
from django.conf import settings
from django.http import HttpResponse, JsonResponse
from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
    start_http_server,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

logger = logging.getLogger(__name__)

# No "<name>_created" series beside each counter and histogram: they would double the series
# count, and the dashboards only use rate() over the counters.
disable_created_metrics()

REQUEST_LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
MODEL_LATENCY_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0, 120.0)

# Counters are declared without their "_total" suffix; prometheus-client adds it.
REQUESTS = Counter("gateway_requests", "Inbound requests at the entry points.", ["channel", "status"])
REJECTIONS = Counter("gateway_rejections", "Refused inbound requests by reason (the error code).",
                     ["channel", "reason"])
REQUEST_LATENCY = Histogram("gateway_request_latency_seconds",
                            "Time an entry point spent on a request (pipeline included).", ["channel"],
                            buckets=REQUEST_LATENCY_BUCKETS_S)
MODEL_CALLS = Counter("gateway_model_calls", "Model call attempts.", ["model", "provider", "status"])
MODEL_LATENCY = Histogram("gateway_model_latency_seconds", "Model call latency.", ["model"],
                          buckets=MODEL_LATENCY_BUCKETS_S)
TOKENS = Counter("gateway_tokens", "Tokens used by model calls.", ["model", "kind"])
COST = Counter("gateway_cost", "Cost of model calls, in the providers' price unit.", ["model"])


def request_observed(*, channel: str, status_code: int, rejection: str, latency_ms: int) -> None:
    try:
        REQUESTS.labels(channel=channel, status=str(status_code)).inc()
        if rejection:
            REJECTIONS.labels(channel=channel, reason=rejection).inc()
        REQUEST_LATENCY.labels(channel=channel).observe(latency_ms / 1000)
    except Exception:
        logger.warning("metrics update failed", exc_info=True)


def llm_call_observed(call) -> None:
    """Count one LLMCall row (tokens, cost, latency)."""
    try:
        MODEL_CALLS.labels(model=call.model, provider=call.provider, status=call.status).inc()
        if call.status == "ok":
            MODEL_LATENCY.labels(model=call.model).observe((call.latency_ms or 0) / 1000)
            TOKENS.labels(model=call.model, kind="prompt").inc(call.prompt_tokens)
            TOKENS.labels(model=call.model, kind="completion").inc(call.completion_tokens)
            COST.labels(model=call.model).inc(float(call.cost or 0))
    except Exception:
        logger.warning("metrics update failed", exc_info=True)


# --- exposition --------------------------------------------------------------------------------


class _ProcessCollector:
    """This process's default registry (its own counters, and those other apps declare there)."""

    def collect(self):
        yield from REGISTRY.collect()


# What ``/metrics`` serves: this process's counters, then the cluster-wide gauges read on each
# scrape that apps register here (``apps.agents.dispatch.QueueDepthCollector``). Those gauges are
# not in the default registry, so a worker's own endpoint does not repeat them. A collector here
# must not raise: it drops its own family when its source is unreachable.
SCRAPE_REGISTRY = CollectorRegistry(auto_describe=False)
SCRAPE_REGISTRY.register(_ProcessCollector())


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
    return HttpResponse(generate_latest(SCRAPE_REGISTRY), content_type=CONTENT_TYPE_LATEST)


def _error(status: int, code: str, message: str, headers: dict | None = None) -> JsonResponse:
    return JsonResponse({"error": {"code": code, "message": message}}, status=status, headers=headers)


# --- a worker's own endpoint -------------------------------------------------------------------


@worker_ready.connect
def serve_when_worker_ready(sender, **_kwargs) -> None:
    """A Celery worker is up: serve its counters (connected when the logs app is ready)."""
    serve_worker_metrics(sender.controller.pool_cls)


def serve_worker_metrics(pool_cls) -> WSGIServer | None:
    """Serve this Celery worker's registry on GATEWAY_WORKER_METRICS_PORT (0: off); returns the
    server, or None when off or when it cannot be served.

    Only a pool that runs tasks in this process (threads, gevent, solo) is served: under prefork
    the counters would be in the child processes, and this endpoint would show none of them.
    A port already taken is logged, not raised: the worker still runs agents without it.
    """
    port = settings.GATEWAY_WORKER_METRICS_PORT
    if not port:
        return None
    from celery.concurrency.prefork import TaskPool as PreforkPool

    if isinstance(pool_cls, type) and issubclass(pool_cls, PreforkPool):
        logger.warning("worker metrics are not served under the prefork pool; use -P threads or -P gevent")
        return None
    addr = settings.GATEWAY_WORKER_METRICS_ADDR
    try:
        server, _thread = start_http_server(port, addr=addr)
    except OSError:
        logger.error("worker metrics could not listen on %s:%s", addr, port, exc_info=True)
        return None
    logger.info("worker metrics at http://%s:%s/metrics", addr, server.server_port)
    return server

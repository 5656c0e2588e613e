"""Counted refusals of the limit step, for the dashboards (Prometheus, scraped at /metrics)."""
from __future__ import annotations

import logging

from prometheus_client import Counter

logger = logging.getLogger("apps.quotas")

LIMIT_REJECTIONS = Counter(
    "gateway_limit_rejections_total",
    "Requests and model calls refused by a limit, by error code, limit kind and channel kind.",
    ["code", "limit", "channel_kind"],
)
LIMIT_BACKEND_ERRORS = Counter(
    "gateway_limit_backend_errors_total",
    "Limit checks that could not reach their store (Redis), by limit kind and the outcome chosen.",
    ["limit", "outcome"],
)
BUDGET_ALERTS = Counter(
    "gateway_budget_alerts_total",
    "Budgets that reached an alert percent of their limit (GATEWAY_BUDGET_ALERT_PERCENTS), by meter and period.",
    ["meter", "period", "percent"],
)


def count_rejection(code: str, channel=None, *, limit: str = "") -> None:
    kind = getattr(channel, "kind", "") or ""
    LIMIT_REJECTIONS.labels(code=code, limit=limit or code, channel_kind=kind).inc()
    logger.info("limit refused", extra={"code": code, "limit": limit, "channel_kind": kind})


def count_backend_error(limit: str, outcome: str, exc: Exception) -> None:
    LIMIT_BACKEND_ERRORS.labels(limit=limit, outcome=outcome).inc()
    logger.warning("limit store unavailable", extra={"limit": limit, "outcome": outcome, "error": repr(exc)})



def count_budget_alert(meter: str, period: str, percent: int) -> None:
    BUDGET_ALERTS.labels(meter=meter, period=period, percent=str(percent)).inc()

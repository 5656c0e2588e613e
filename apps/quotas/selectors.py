"""Reading usage and limits: for ``GET /api/v1/usage`` and the staff admin."""
from __future__ import annotations

import time
from datetime import timedelta
from decimal import Decimal

from django.db.models import Sum

from .budgets import MICROS, Counter, counters_for, seed_from_rollup, utc_today
from .ledger import get_ledger
from .limits import RateCheck, rate_usage
from .metrics import count_backend_error
from .models import UsageDaily
from .policies import Limits, api_key_limits, user_limits


def rate_state(check: RateCheck, *, source: str = "") -> dict:
    """The current window of one rate: how many counted, how many left, when it resets."""
    usage = rate_usage(check)
    allowed = int(check.rate.split("/")[0])
    used = usage["count"] if usage else None
    return {
        "scope": check.limit, "rate": check.rate, "source": source, "used": used,
        "remaining": None if used is None else max(0, allowed - used),
        "resets_in": max(0, int(usage["time_left"])) if usage else None,
    }


def budget_states(limits: Limits, *, now: float | None = None) -> list[dict]:
    """Every budget of one subject with its live counter (seeded from the rollup if missing)."""
    now = now or time.time()
    counters = counters_for(limits, utc_today(now))
    if not counters:
        return []
    try:
        live = get_ledger().read([c.key for c in counters], now=now)
    except Exception as exc:
        count_backend_error("budget_read", "rollup", exc)
        live = [None] * len(counters)
    states = []
    for counter, pair in zip(counters, live, strict=True):
        used, reserved = pair if pair is not None else (seed_from_rollup(counter), 0)
        states.append(_budget_state(counter, used, reserved, limits))
    return states


def _budget_state(counter: Counter, used: int, reserved: int, limits: Limits) -> dict:
    def show(value: int):
        return value if counter.meter == "tokens" else str((Decimal(value) / MICROS).quantize(Decimal("0.000001")))

    field = "cost_limit" if counter.meter == "cost" else f"tokens_per_{counter.period}"
    return {
        "scope": counter.subject.split(":")[0], "meter": counter.meter, "period": counter.period,
        "limit": show(counter.limit), "used": show(used), "reserved": show(reserved),
        "remaining": show(max(0, counter.limit - used - reserved)),
        "exhausted": used + reserved >= counter.limit,
        "resets_at": counter.resets_at.isoformat().replace("+00:00", "Z"),
        "source": limits.sources.get(field, ""),
    }


def usage_totals(*, user=None, api_key_id=None, now: float | None = None) -> dict:
    """Calls, tokens and cost today and this month (UTC), from the daily rollup."""
    today = utc_today(now or time.time())
    rows = UsageDaily.objects.all()
    if user is not None:
        rows = rows.filter(user=user)
    if api_key_id is not None:
        rows = rows.filter(api_key_id=api_key_id)
    out = {}
    for name, start, end in (("today", today, today + timedelta(days=1)),
                             ("this_month", today.replace(day=1), today + timedelta(days=1))):
        totals = rows.filter(date__gte=start, date__lt=end).aggregate(
            calls=Sum("calls"), prompt_tokens=Sum("prompt_tokens"), completion_tokens=Sum("completion_tokens"),
            total_tokens=Sum("total_tokens"), cost=Sum("cost"),
        )
        out[name] = {k: (v or 0) for k, v in totals.items()}
        out[name]["cost"] = str(Decimal(out[name]["cost"]).quantize(Decimal("0.000001")))
    return out


def usage_for_caller(*, user, api_key=None) -> dict:
    """What ``GET /api/v1/usage`` shows: the caller's own limits, live counters and usage."""
    role = user.role
    mine = user_limits(user, role=role)
    rates = [rate_state(RateCheck("user", f"user:{user.pk}", mine.request_rate, ""),
                        source=mine.sources.get("request_rate", ""))] if mine.request_rate else []
    budgets = budget_states(mine)
    body = {"user_id": str(user.pk), "role": role, "rates": rates, "budgets": budgets,
            "usage": usage_totals(user=user)}
    if api_key is not None:
        key_limits = api_key_limits(api_key.pk)
        if key_limits.request_rate:
            rates.append(rate_state(RateCheck("api_key", f"api_key:{api_key.pk}", key_limits.request_rate, ""),
                                    source=key_limits.sources.get("request_rate", "")))
        budgets.extend(budget_states(key_limits))
        body["api_key"] = {"prefix": getattr(api_key, "named_prefix", api_key.prefix),  # as the client named it
                           "usage": usage_totals(api_key_id=api_key.pk)}
    return body

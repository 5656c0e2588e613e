"""Token quotas and cost budgets: reserve before a model call, settle after, refuse when used up.

Meters: ``tokens`` (total tokens) and ``cost`` (money in millionths of the price currency, so the
counters stay integers). Periods are UTC days and months. Subjects of a model call: the sender
(their own policy, else their role's), the API key that sent the message, and the channel.

    reservation = reserve_model_call(message, model, prompt, max_tokens=..., tools=...)
    try:
        with kept(reservation):  result = llm.chat(...)
    except ...:  release_model_call(reservation); raise
    settle_model_call(reservation, result)

A reservation expires after ``GATEWAY_QUOTA_RESERVATION_TTL_SECONDS``, so that a worker that died
does not hold a budget for ever; while its call runs, ``kept`` has it renewed (one thread per
process, one ledger round trip per period for all of them), so a call however long keeps its
budget, and only a dead process's reservations lapse.

A settle that fails on the ledger's store (Redis away) is not lost: the call's usage goes to the
durable rollup with its LLM call row all the same, with an ``UnsettledUsage`` row naming the
counters; recovery (``settle_unsettled``) drops those counters once the store answers, and the next
admission re-seeds them from the rollup.
"""
from __future__ import annotations

import json
import math
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal

from django.conf import settings
from django.db import transaction
from django.db.models import Sum

from apps.core.errors import GatewayError, LLMError, QuotaExceeded, ServiceUnavailable
from gateway_project.db import Statement, stored, through_outage

from . import alerts
from .ledger import ADMITTED, MISSING, CounterCall, get_ledger
from .metrics import count_backend_error, count_rejection
from .models import Period, QuotaCredit, UnsettledUsage, UsageDaily
from .policies import Limits, api_key_limits, channel_limits, user_limits

MICROS = Decimal(1_000_000)
COST_QUANTUM = Decimal("0.000001")
COUNTER_GRACE_SECONDS = 2 * 86400  # a counter outlives its period, for late settlements


class QuotaRefused(LLMError):
    """A model call refused before it was made. ``gateway_error`` is what the sender is told."""

    def __init__(self, error: GatewayError):
        super().__init__(error.code, error.message, retryable=False, status=error.status)
        self.gateway_error = error


class QuotaBusy(QuotaRefused):
    """Refused only because other calls in flight hold what is left of a budget: they settle at
    their real use, usually far below their reservations, so the caller may try again shortly."""

    def __init__(self, counter: Counter, error: GatewayError):
        super().__init__(error)
        self.counter = counter


@dataclass(frozen=True)
class Counter:
    subject: str  # "user:<uuid>", "api_key:<id>", "channel:<id>"
    meter: str  # "tokens" or "cost"
    period: str  # Period.DAY or Period.MONTH
    start: date
    limit: int

    @property
    def key(self) -> str:
        return f"{settings.GATEWAY_LIMIT_KEY_PREFIX}:q:{self.meter}:{self.period}:{self.start:%Y%m%d}:{self.subject}"

    @property
    def end(self) -> date:
        if self.period == Period.DAY:
            return self.start + timedelta(days=1)
        return (self.start.replace(day=28) + timedelta(days=4)).replace(day=1)

    @property
    def resets_at(self) -> datetime:
        return datetime(self.end.year, self.end.month, self.end.day, tzinfo=UTC)

    def describe(self) -> str:
        if self.meter == "tokens":
            return f"{self.limit} tokens per {self.period}"
        return f"{Decimal(self.limit) / MICROS:.2f} per {self.period}"


@dataclass
class Reservation:
    """An admitted model call: what it reserved, and whose usage it will become."""

    id: str
    counters: list[Counter]
    tokens: int
    cost_micros: int
    user_id: object
    api_key_id: int | None
    channel_id: int | None
    model: object = field(repr=False, default=None)
    unsettled: bool = False  # the settle did not reach the ledger's store


def period_start(period: str, today: date) -> date:
    return today if period == Period.DAY else today.replace(day=1)


def counters_for(limits: Limits, today: date) -> list[Counter]:
    counters = []
    if limits.tokens_per_day is not None:
        counters.append(Counter(limits.subject, "tokens", Period.DAY, today, int(limits.tokens_per_day)))
    if limits.tokens_per_month is not None:
        counters.append(Counter(limits.subject, "tokens", Period.MONTH, today.replace(day=1),
                                int(limits.tokens_per_month)))
    if limits.cost_limit is not None:
        start = period_start(limits.cost_period, today)
        counters.append(Counter(limits.subject, "cost", limits.cost_period, start, to_micros(limits.cost_limit)))
    return counters


def subject_limits(*, user, api_key_id, channel_id) -> list[Limits]:
    limits = []
    if user is not None:
        limits.append(user_limits(user))
    if api_key_id is not None:
        limits.append(api_key_limits(api_key_id))
    if channel_id is not None:
        limits.append(channel_limits(channel_id))
    return limits


def to_micros(amount: Decimal) -> int:
    return int(Decimal(amount).quantize(COST_QUANTUM, rounding=ROUND_HALF_UP) * MICROS)


def model_cost(model, prompt_tokens: int, completion_tokens: int) -> Decimal:
    return model.cost(prompt_tokens, completion_tokens).quantize(COST_QUANTUM, rounding=ROUND_HALF_UP)


def utc_today(now: float) -> date:
    return datetime.fromtimestamp(now, UTC).date()


# --- estimating ---------------------------------------------------------------------------


def text_tokens(text: str) -> int:
    """A generous token count: ~3 ASCII characters (or one word) per token, 1 per other character.

    Generous on purpose: the reservation bounds what one call may spend past a quota.
    """
    ascii_chars = len(text.encode("ascii", "ignore"))
    return max(len(text.split()), math.ceil(ascii_chars / 3)) + (len(text) - ascii_chars)


def estimate_prompt_tokens(prompt: list[dict], tools: list[dict] | None = None) -> int:
    total = 3
    for message in prompt:
        content = message.get("content") or ""
        total += 4 + text_tokens(content if isinstance(content, str) else json.dumps(content))
        if message.get("tool_calls"):
            total += text_tokens(json.dumps(message["tool_calls"]))
    if tools:
        total += text_tokens(json.dumps(tools))
    return total


def estimate_usage(result, prompt: list[dict], tools: list[dict] | None = None) -> None:
    """Fill in ``result``'s usage from the prompt and the answer (its text and tool calls), for a
    provider that reported none: booked and logged as if reported."""
    result.prompt_tokens = estimate_prompt_tokens(prompt, tools)
    result.completion_tokens = text_tokens(result.text) + (
        text_tokens(json.dumps(result.tool_calls)) if result.tool_calls else 0)
    result.total_tokens = result.prompt_tokens + result.completion_tokens


# --- the model-call hooks -----------------------------------------------------------------


def reserve_model_call(message, model, prompt: list[dict], *, max_tokens: int | None,
                       tools: list[dict] | None = None) -> Reservation:
    """Reserve the call's estimate (prompt + max_tokens) on every budget of the message's sender,
    API key and channel. Raises QuotaRefused when one is used up (the model is not called)."""
    prompt_estimate = estimate_prompt_tokens(prompt, tools)
    completion_estimate = max_tokens or settings.GATEWAY_QUOTA_DEFAULT_MAX_TOKENS
    reservation = Reservation(
        id=uuid.uuid4().hex, counters=[], tokens=prompt_estimate + completion_estimate,
        cost_micros=to_micros(model.cost(prompt_estimate, completion_estimate)),
        user_id=message.sender_id, api_key_id=getattr(message, "api_key_id", None),
        channel_id=message.channel_id, model=model,
    )
    now = time.time()
    counters = [
        c for limits in subject_limits(user=message.sender, api_key_id=reservation.api_key_id,
                                       channel_id=reservation.channel_id)
        for c in counters_for(limits, utc_today(now))
    ]
    if not counters:
        return reservation
    amounts = [reservation.tokens if c.meter == "tokens" else reservation.cost_micros for c in counters]
    try:
        refused = _admit(counters, amounts, reservation_id=reservation.id, now=now)
    except Exception as exc:  # the ledger's store is unreachable
        if settings.GATEWAY_BUDGET_FAIL_OPEN:
            count_backend_error("budget", "open", exc)
            return reservation
        count_backend_error("budget", "closed", exc)
        raise QuotaRefused(ServiceUnavailable(
            "Usage limits cannot be checked right now; please try again shortly.",
            retry_after=settings.GATEWAY_LIMIT_UNAVAILABLE_RETRY_SECONDS,
        )) from exc
    if refused is not None:
        counter, spent = refused
        if not spent:
            raise QuotaBusy(counter, busy_error(counter))
        count_refusal(message.channel, counter)
        raise QuotaRefused(quota_error(counter, now))
    reservation.counters = counters
    return reservation


def count_refusal(channel, counter: Counter) -> None:
    count_rejection(QuotaExceeded.code, channel, limit=f"{counter.meter}_{counter.period}")


def settle_model_call(reservation: Reservation, result, *, write_usage: bool = True) -> Statement:
    """Book the call's usage and write it to the daily rollup: the response's, or ``estimate_usage``'s
    when the provider reported none (the caller fills it in, so its log row says the same).

    Returns the rollup's upsert. ``write_usage=False``: the caller writes it, together with its own
    row (the agent run writes it with the model call's log row, in one statement).
    """
    prompt, completion = result.prompt_tokens or 0, result.completion_tokens or 0
    total = result.total_tokens or (prompt + completion)
    cost = model_cost(reservation.model, prompt, completion)
    if reservation.counters:
        amounts = [total if c.meter == "tokens" else to_micros(cost) for c in reservation.counters]
        used_after = _settle(reservation, amounts)
        if used_after is not None and settings.GATEWAY_BUDGET_ALERT_PERCENTS:
            alerts.record(alerts.crossed(reservation.counters, amounts, used_after))
    upsert = usage_upsert(
        user_id=reservation.user_id, api_key_id=reservation.api_key_id, channel_id=reservation.channel_id,
        prompt_tokens=prompt, completion_tokens=completion, total_tokens=total, cost=cost,
    )
    if write_usage:
        def write() -> None:
            with transaction.atomic():
                upsert.execute()
                if (marker := unsettled_usage(reservation)) is not None:
                    marker.save()
        through_outage(write)  # the ledger above is settled: write the row, not settle twice
    return upsert


def unsettled_usage(reservation: Reservation) -> UnsettledUsage | None:
    """The row to write with the call's usage when its settle failed (None when it went through)."""
    if not reservation.unsettled:
        return None
    return UnsettledUsage(counter_keys=[c.key for c in reservation.counters])


def settle_unsettled(*, limit: int = 500) -> int:
    """Recovery: drop the live counters that calls failed to settle on, so the next admission
    re-seeds them from the rollup, which holds those calls. Raises while the store is still away
    (the rows stay for the next pass); returns how many calls were settled this way."""
    rows = list(UnsettledUsage.objects.order_by("pk")[:limit])
    if not rows:
        return 0
    get_ledger().forget(sorted({key for row in rows for key in row.counter_keys}))
    UnsettledUsage.objects.filter(pk__in=[row.pk for row in rows]).delete()
    return len(rows)


def release_model_call(reservation: Reservation) -> None:
    """The call failed: give back what it reserved (nothing is booked)."""
    if reservation.counters:
        _settle(reservation, [0] * len(reservation.counters))


def _settle(reservation: Reservation, amounts: list[int]) -> list[int | None] | None:
    """Book ``amounts``: each counter's used amount after (None where nothing was booked), or None
    when the store could not be reached."""
    try:
        return get_ledger().settle([c.key for c in reservation.counters], reservation_id=reservation.id,
                                   amounts=amounts)
    except Exception as exc:
        # The usage still reaches the daily rollup; the counters are re-seeded from it once the store
        # is back (settle_unsettled), whether or not the store kept them.
        count_backend_error("budget_settle", "deferred", exc)
        reservation.unsettled = any(amounts)
        return None


# --- reservations kept while their call runs -------------------------------------------------

_held: dict[str, list[str]] = {}  # reservation id -> its counter keys, while its call runs in this process
_keeper = threading.Condition()
_keeper_thread: threading.Thread | None = None
_renew_due = 0.0  # time.monotonic() of the keeper's next renewal


@contextmanager
def kept(reservation: Reservation):
    """Renew ``reservation``'s expiry until the block ends (its model call is running)."""
    global _keeper_thread, _renew_due
    if not reservation.counters:  # nothing reserved
        yield
        return
    with _keeper:
        _held[reservation.id] = [c.key for c in reservation.counters]
        if _keeper_thread is None or not _keeper_thread.is_alive():
            _keeper_thread = threading.Thread(target=_renew_forever, name="reservation-keeper", daemon=True)
            _renew_due = time.monotonic() + renewal_period()
            _keeper_thread.start()
        elif _renew_due > (due := time.monotonic() + renewal_period()):  # the TTL was lowered (tests)
            _renew_due = due
            _keeper.notify()
    try:
        yield
    finally:
        with _keeper:
            _held.pop(reservation.id, None)


def renewal_period() -> float:
    return max(0.5, settings.GATEWAY_QUOTA_RESERVATION_TTL_SECONDS / 3)


def renew_held() -> int:
    """Push the expiry of every reservation this process holds forward, in one ledger round trip;
    returns how many (counter, reservation) were renewed. A settled one is not brought back."""
    with _keeper:
        held = [(keys, rid) for rid, keys in _held.items()]
    if not held:
        return 0
    return get_ledger().renew(held, expires_at=time.time() + settings.GATEWAY_QUOTA_RESERVATION_TTL_SECONDS)


def _renew_forever() -> None:
    global _renew_due
    while True:
        with _keeper:
            while (wait := _renew_due - time.monotonic()) > 0:  # kept() may bring the renewal forward
                _keeper.wait(wait)
            _renew_due = time.monotonic() + renewal_period()
        try:
            renew_held()
        except Exception as exc:  # the store is away: the next period tries again, before the TTL runs out
            count_backend_error("budget_renew", "retried", exc)


def usage_upsert(*, user_id, api_key_id, channel_id, prompt_tokens: int, completion_tokens: int,
                 total_tokens: int, cost: Decimal, day: date | None = None) -> Statement:
    """The upsert adding one model call to the day's rollup row (INSERT … ON CONFLICT DO UPDATE,
    PostgreSQL and SQLite alike), so concurrent first calls of a day add up instead of racing."""
    day = day or utc_today(time.time())
    key = ":".join(str(v) if v is not None else "-" for v in (user_id, api_key_id, channel_id))
    params = [stored(UsageDaily, "date", day), key, stored(UsageDaily, "user", user_id),
              stored(UsageDaily, "api_key", api_key_id), stored(UsageDaily, "channel", channel_id),
              prompt_tokens, completion_tokens, total_tokens, stored(UsageDaily, "cost", cost)]
    return Statement(USAGE_UPSERT_SQL, params)


_USAGE = UsageDaily._meta.db_table
USAGE_UPSERT_SQL = f"""
INSERT INTO {_USAGE} (date, key, user_id, api_key_id, channel_id, calls, prompt_tokens, completion_tokens,
                      total_tokens, cost)
VALUES (%s, %s, %s, %s, %s, 1, %s, %s, %s, %s)
ON CONFLICT (date, key) DO UPDATE SET
    calls = {_USAGE}.calls + 1,
    prompt_tokens = {_USAGE}.prompt_tokens + EXCLUDED.prompt_tokens,
    completion_tokens = {_USAGE}.completion_tokens + EXCLUDED.completion_tokens,
    total_tokens = {_USAGE}.total_tokens + EXCLUDED.total_tokens,
    cost = {_USAGE}.cost + EXCLUDED.cost
"""


# --- the pipeline's entry check ----------------------------------------------------------------


def check_budgets_open(*, user, api_key_id=None, channel=None) -> None:
    """Refuse a message at entry when a budget it would spend from is already used up."""
    now = time.time()
    counters = [
        c for limits in subject_limits(user=user, api_key_id=api_key_id, channel_id=getattr(channel, "pk", None))
        for c in counters_for(limits, utc_today(now))
    ]
    if not counters:
        return
    try:
        refused = _admit(counters, [0] * len(counters), reservation_id="", now=now)
    except Exception as exc:
        if settings.GATEWAY_BUDGET_FAIL_OPEN:
            count_backend_error("budget", "open", exc)
            return
        count_backend_error("budget", "closed", exc)
        raise ServiceUnavailable(retry_after=settings.GATEWAY_LIMIT_UNAVAILABLE_RETRY_SECONDS) from exc
    if refused is not None:
        count_refusal(channel, refused[0])
        raise quota_error(refused[0], now)


def _budget_named(counter: Counter) -> str:
    """"Your token quota (1000 tokens per day)", "This channel's cost budget (...)"."""
    whose = {"user": "Your", "api_key": "This API key's", "channel": "This channel's"}[counter.subject.split(":")[0]]
    meter = "token quota" if counter.meter == "tokens" else "cost budget"
    return f"{whose} {meter} ({counter.describe()})"


def busy_error(counter: Counter) -> QuotaExceeded:
    """What the sender is told when what is left of a budget stayed held by calls in flight."""
    named = _budget_named(counter)
    return QuotaExceeded(f"What is left of {named[0].lower()}{named[1:]} is held by answers in progress; "
                         "try again in a few seconds.", retry_after=settings.GATEWAY_QUOTA_BUSY_RETRY_SECONDS)


def quota_error(counter: Counter, now: float) -> QuotaExceeded:
    resets = counter.resets_at
    return QuotaExceeded(
        f"{_budget_named(counter)} is used up; it resets at {resets:%Y-%m-%d %H:%M} UTC.",
        retry_after=max(1, math.ceil(resets.timestamp() - now)),
    )


def _admit(counters: list[Counter], amounts: list[int], *, reservation_id: str,
           now: float) -> tuple[Counter, bool] | None:
    """Admit on the ledger, seeding missing counters from the rollup. Returns the refusing counter
    and whether its used amount alone refused it (False: reservations of calls in flight did)."""
    ledger = get_ledger()
    expires = [int(c.resets_at.timestamp()) + COUNTER_GRACE_SECONDS for c in counters]
    calls = [CounterCall(c.key, c.limit, a, e) for c, a, e in zip(counters, amounts, expires, strict=True)]
    reservation_expires_at = now + settings.GATEWAY_QUOTA_RESERVATION_TTL_SECONDS
    admission = ledger.admit(calls, reservation_id=reservation_id, now=now,
                             reservation_expires_at=reservation_expires_at)
    if admission.outcome == MISSING:
        calls = [
            CounterCall(call.key, call.limit, call.amount, call.expires_at,
                        seed=seed_from_rollup(counters[i]) if i in admission.missing else None)
            for i, call in enumerate(calls)
        ]
        admission = ledger.admit(calls, reservation_id=reservation_id, now=now,
                                 reservation_expires_at=reservation_expires_at)
    if admission.outcome == ADMITTED:
        return None
    if admission.outcome == MISSING:  # dropped between the two calls (period rollover): be strict
        raise RuntimeError("quota counters vanished while being seeded")
    return counters[admission.refused_index], admission.spent


def seed_from_rollup(counter: Counter) -> int:
    """The counter's usage so far from the durable rollup, minus what staff resets forgave."""
    forgiven = QuotaCredit.objects.filter(
        subject=counter.subject, meter=counter.meter, period=counter.period, period_start=counter.start,
    ).aggregate(total=Sum("amount"))["total"] or 0
    return max(0, spent_in_period(counter) - int(forgiven))


def spent_in_period(counter: Counter) -> int:
    """What the counter's subject really spent in its period so far (the rollup; resets forgive nothing here)."""
    kind, _, ident = counter.subject.partition(":")
    rows = UsageDaily.objects.filter(**{f"{kind}_id": ident}, date__gte=counter.start, date__lt=counter.end)
    totals = rows.aggregate(tokens=Sum("total_tokens"), cost=Sum("cost"))
    if counter.meter == "tokens":
        return int(totals["tokens"] or 0)
    return to_micros(totals["cost"] or Decimal(0))

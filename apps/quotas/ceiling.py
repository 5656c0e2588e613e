"""No limit more generous than one's own: the most staff who are not superusers may give.

Staff who may set a customer's limits could otherwise make an account (a puppet), lift its limits
or reset its budget again and again, and use its API key herself. So a policy change or a reset by
someone who is not a superuser may not leave any subject with a limit more generous than her own
(``user_limits`` of herself), field by field, unless the subject had it already (someone else
gave it). "No limit" is more generous than any number.
"""
from __future__ import annotations

import time
from decimal import Decimal

from django.conf import settings

from .budgets import MICROS, counters_for, spent_in_period, utc_today
from .models import Period, QuotaPolicy, parse_rate
from .policies import Limits, load_policies, policy_key, policy_subject_limits, user_limits

DAYS_IN_A_LONG_MONTH = 31


def rate_within(rate: str, ceiling: str) -> bool:
    """Whether ``rate`` allows no more than ``ceiling``: no more requests in one window, none
    faster over time ("" is no limit; a rate that does not parse is ignored, so no limit too)."""
    try:
        top, top_seconds = parse_rate(ceiling)
    except ValueError:
        return True
    try:
        count, seconds = parse_rate(rate)
    except ValueError:
        return False
    return count <= top and count * top_seconds <= top * seconds


def amount_within(amount, period: str, ceiling, ceiling_period: str) -> bool:
    """Whether a budget of ``amount`` per ``period`` allows no more than ``ceiling`` per
    ``ceiling_period`` (None is no limit). A month's budget may all go in one day; a day's
    comes back every day of the month."""
    if ceiling is None:
        return True
    if amount is None:
        return False
    if period == Period.DAY and ceiling_period == Period.MONTH:
        return amount * DAYS_IN_A_LONG_MONTH <= ceiling
    return amount <= ceiling


def token_reach(limits: Limits) -> tuple[int | None, int | None]:
    """The most tokens ``limits`` let go in one day and in one month, both budgets together (None:
    no limit). A month's budget may all go in one day; a day's comes back every day of the month.
    So a day's budget bounds the month even with no month's budget, and the other way round."""
    day, month = limits.tokens_per_day, limits.tokens_per_month
    in_a_day = min((n for n in (day, month) if n is not None), default=None)
    in_a_month = min((n for n in (month, None if day is None else day * DAYS_IN_A_LONG_MONTH) if n is not None),
                     default=None)
    return in_a_day, in_a_month


def beyond(limits: Limits, ceiling: Limits) -> list[str]:
    """The limits of ``limits`` more generous than ``ceiling``'s, by field name. Token budgets are
    compared by what they let go in a day and in a month (``token_reach``), not field by field:
    a day's budget lifted where only a month's is hers would otherwise pass as "no month's budget
    before, none after"."""
    fields = [name for name in ("request_rate", "per_ip_rate")
              if not rate_within(getattr(limits, name), getattr(ceiling, name))]
    fields += [name for name, amount, top in zip(("tokens_per_day", "tokens_per_month"), token_reach(limits),
                                                 token_reach(ceiling), strict=True)
               if not amount_within(amount, Period.DAY, top, Period.DAY)]
    if not amount_within(limits.cost_limit, limits.cost_period, ceiling.cost_limit, ceiling.cost_period):
        fields.append("cost_limit")
    return fields


def own_limits(actor, *, scope: str, table: dict) -> Limits:
    """The most ``actor`` may give a subject of ``scope``: her own limits for a user, an API key
    or a role. A channel's counters are shared by everyone on it, and each of them stays within
    their own limits, so only its per-address rate is bounded: by GATEWAY_IP_RATE, what her own
    address gets on a channel with no policy."""
    if scope == QuotaPolicy.Scope.CHANNEL:
        return Limits(subject="", per_ip_rate=settings.GATEWAY_IP_RATE)
    return user_limits(actor, table=table)


def policy_change_beyond_own(actor, *, original: QuotaPolicy | None, changed: QuotaPolicy | None) -> list[str]:
    """The limits that saving ``changed`` (over ``original``, the stored row) or deleting
    ``original`` (``changed`` None) would make more generous than both ``actor``'s own and what
    their subject has now; [] for a superuser. Both subjects count when a policy moves."""
    if actor.is_superuser:
        return []
    now = load_policies()  # the database's, not the process's copy: this decides a permission
    after = {key: policy for key, policy in now.items() if original is None or policy.pk != original.pk}
    if changed is not None and changed.enabled:
        after[policy_key(changed)] = changed
    fields: list[str] = []
    for policy in (p for p in (original, changed) if p is not None):
        before_limits = policy_subject_limits(policy, table=now)
        after_limits = policy_subject_limits(policy, table=after)
        if before_limits is None or after_limits is None:
            continue
        raised = beyond(after_limits, before_limits)
        fields += [name for name in beyond(after_limits, own_limits(actor, scope=policy.scope, table=now))
                   if name in raised and name not in fields]
    return fields


def reset_beyond_own(actor, user) -> list[str]:
    """The budgets of ``user`` that a reset would let them spend past ``actor``'s own this period:
    what they really spent (earlier resets forgive nothing here) plus their whole limit again.
    [] for a superuser. So resets, however many, never give them more than she may spend."""
    if actor.is_superuser:
        return []
    table = load_policies()
    reach: dict = {}
    for counter in counters_for(user_limits(user, table=table), utc_today(time.time())):
        total = counter.limit + spent_in_period(counter)
        if counter.meter == "cost":
            reach["cost_limit"], reach["cost_period"] = Decimal(total) / MICROS, counter.period
        else:
            reach[f"tokens_per_{counter.period}"] = total
    if not reach:
        return []
    fields = beyond(Limits(subject="", **reach), own_limits(actor, scope=QuotaPolicy.Scope.USER, table=table))
    # A budget they do not have is not one a reset gives; a day's bounds their month and back.
    tokens = any(name.startswith("tokens_") for name in reach)
    return [name for name in fields if name in reach or (tokens and name.startswith("tokens_"))]

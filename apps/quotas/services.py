"""Changing quotas and IP rules (staff actions), each audited."""
from __future__ import annotations

import time

from django.db import transaction

from apps.logs.services import audit

from .budgets import counters_for, seed_from_rollup, utc_today
from .ledger import get_ledger
from .models import IpRule, QuotaCredit
from .policies import api_key_limits, user_limits


@transaction.atomic
def quota_reset(*, user=None, api_key=None, actor, client_ip: str | None = None) -> dict[str, int]:
    """Forgive the current periods' usage of a user's (or an API key's) budgets.

    The live counters drop to zero (open reservations stay), and a QuotaCredit row per counter
    keeps the reset when a counter is later re-seeded from the rollup. The rollup itself (what
    was really spent) is untouched. Returns {counter: usage forgiven}; writes a ``quota.reset``
    audit event.
    """
    if (user is None) == (api_key is None):
        raise ValueError("reset either a user's or an API key's quota")
    limits = user_limits(user) if user is not None else api_key_limits(api_key.pk)
    counters = counters_for(limits, utc_today(time.time()))
    previous = get_ledger().take_used([c.key for c in counters]) if counters else []
    forgiven: dict[str, int] = {}
    for counter, used in zip(counters, previous, strict=True):
        amount = seed_from_rollup(counter) if used is None else used
        forgiven[f"{counter.meter}/{counter.period}"] = amount
        if amount:
            QuotaCredit.objects.create(subject=counter.subject, meter=counter.meter, period=counter.period,
                                       period_start=counter.start, amount=amount, actor=actor)
    audit(action="quota.reset", actor=actor, target=user if user is not None else api_key,
          before=forgiven, after={name: 0 for name in forgiven}, client_ip=client_ip)
    return forgiven


@transaction.atomic
def ip_allowlist_replace(*, channel, cidrs: list[str], source: str, actor=None) -> list[IpRule]:
    """Make ``cidrs`` the channel's allow rules from ``source`` (e.g. a platform's published
    ranges), replacing the earlier rules from that source; manual rules stay."""
    before = sorted(IpRule.objects.filter(channel=channel, source=source).values_list("cidr", flat=True))
    IpRule.objects.filter(channel=channel, source=source).delete()
    rules = []
    for cidr in cidrs:
        rule = IpRule(channel=channel, action=IpRule.Action.ALLOW, cidr=cidr, source=source)
        rule.full_clean()
        rule.save()
        rules.append(rule)
    audit(action="ip_rules.replaced", actor=actor, target=channel, before=before,
          after=sorted(r.cidr for r in rules), source=source)
    return rules

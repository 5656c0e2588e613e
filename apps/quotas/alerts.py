"""Budget alerts: a budget reaching GATEWAY_BUDGET_ALERT_PERCENTS of its limit, told to staff.

- ``crossed``: which marks a settlement passed. The ledger books a settlement atomically and says
  what was used after it, so exactly one settlement passes each mark, in any number of processes.
- ``record``: one ``BudgetAlert`` row per budget, period, limit and percent (a unique constraint: a
  settlement run again, or two processes racing, adds none), counted in
  ``gateway_budget_alerts_total``. Never fails the call that crossed the mark.
- ``send_due``: the rows not yet sent, POSTed to GATEWAY_BUDGET_ALERT_WEBHOOK_URL as JSON, signed
  (``X-Gateway-Timestamp``, ``X-Gateway-Signature: sha256=<hex>`` over ``timestamp.body``). A failed
  send is tried again at the next passes, waiting longer each time, up to
  GATEWAY_BUDGET_ALERT_MAX_ATTEMPTS, and ends its pass (the rest wait for the next). Run by celery
  beat (``quotas.send_budget_alerts``) and, on the embedded default, by the server's recovery loop.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from apps.core.http import ConnectorError, host, request_json
from apps.core.signing import SIGNATURE_HEADER, TIMESTAMP_HEADER, timestamped_signature
from gateway_project.db import through_outage

from .metrics import count_budget_alert
from .models import BudgetAlert

logger = logging.getLogger(__name__)

SEND_BATCH = 100
RETRY_BASE_SECONDS = 30  # then doubled per failed attempt, up to RETRY_MAX_SECONDS
RETRY_MAX_SECONDS = 3600


@dataclass(frozen=True)
class Crossing:
    counter: object  # apps.quotas.budgets.Counter
    percent: int
    used: int


def crossed(counters, amounts: list[int], used_after: list[int | None]) -> list[Crossing]:
    """The alert marks each counter passed with this settlement: used before < mark <= used after."""
    percents = settings.GATEWAY_BUDGET_ALERT_PERCENTS
    out = []
    for counter, amount, used in zip(counters, amounts, used_after, strict=True):
        if used is None or amount <= 0 or counter.limit <= 0:
            continue
        before = used - amount
        out += [Crossing(counter, p, used) for p in percents if before * 100 < counter.limit * p <= used * 100]
    return out


def record(crossings: list[Crossing]) -> None:
    """Write each crossing's alert, once, after the caller's transaction if it is in one; logged,
    never raised (the model call is already booked)."""
    if crossings:
        transaction.on_commit(lambda: _write(crossings))


def _write(crossings: list[Crossing]) -> None:
    for crossing in crossings:
        counter = crossing.counter
        kind, _, subject_id = counter.subject.partition(":")
        fields = dict(
            counter=counter.key, percent=crossing.percent, subject=counter.subject,
            user_id=subject_id if kind == "user" else None,
            api_key_id=int(subject_id) if kind == "api_key" else None,
            channel_id=int(subject_id) if kind == "channel" else None,
            meter=counter.meter, period=counter.period, period_start=counter.start,
            limit=counter.limit, used=crossing.used,
            next_attempt_at=timezone.now() if settings.GATEWAY_BUDGET_ALERT_WEBHOOK_URL else None,
        )

        def insert(fields=fields):
            with transaction.atomic():
                BudgetAlert.objects.create(**fields)

        try:
            # No settlement passes this mark again: ride out a dropped connection, as the call's usage does.
            through_outage(insert)
        except IntegrityError:
            continue  # recorded already: this settlement ran again, or the alert's subject is gone
        except Exception:
            logger.exception("could not record a budget alert", extra={"subject": counter.subject})
            continue
        count_budget_alert(counter.meter, counter.period, crossing.percent)
        logger.warning("budget alert", extra={"subject": counter.subject, "budget": counter.describe(),
                                              "percent": crossing.percent, "used": crossing.used})


def amount_text(meter: str, amount: int) -> str:
    """Tokens as a whole number; cost (kept in millionths) in the price currency."""
    return str(amount) if meter == "tokens" else f"{Decimal(amount) / 1_000_000:.6f}"


def payload(alert: BudgetAlert) -> dict:
    names = {"user": alert.user and alert.user.username,
             "api_key": alert.api_key and alert.api_key.masked,
             "channel": alert.channel and alert.channel.slug}
    kind = alert.subject.partition(":")[0]
    return {
        "type": "budget.threshold_reached",
        "alert_id": alert.pk,
        "subject": {"type": kind, "id": alert.subject.partition(":")[2], "name": names.get(kind)},
        "meter": alert.meter,
        "period": alert.period,
        "period_start": alert.period_start.isoformat(),
        "percent": alert.percent,
        "limit": amount_text(alert.meter, alert.limit),
        "used": amount_text(alert.meter, alert.used),
        "created_at": alert.created_at.isoformat(),
    }


def send_due(*, limit: int = SEND_BATCH) -> int:
    """Send the alerts due to the webhook (none set: nothing to do); returns how many went out."""
    url = settings.GATEWAY_BUDGET_ALERT_WEBHOOK_URL
    if not url:
        return 0
    # Those recorded while a webhook was set (next_attempt_at): setting one later does not send
    # the alerts of past periods all at once.
    due = (BudgetAlert.objects.filter(sent_at__isnull=True, attempts__lt=settings.GATEWAY_BUDGET_ALERT_MAX_ATTEMPTS,
                                      next_attempt_at__lte=timezone.now())
           .select_related("user", "api_key", "channel").order_by("created_at"))
    sent = 0
    for alert in due[:limit]:
        body = json.dumps(payload(alert)).encode()
        timestamp = str(int(time.time()))
        headers = {TIMESTAMP_HEADER: timestamp, SIGNATURE_HEADER: timestamped_signature(
            settings.GATEWAY_BUDGET_ALERT_WEBHOOK_SECRET, timestamp, body)}
        # Claimed first, so that a pass running beside this one (two beats, or a slow send) skips it;
        # until the backoff counted from now, not from the pass's start (slow sends before this one).
        claimed = BudgetAlert.objects.filter(pk=alert.pk, sent_at__isnull=True, attempts=alert.attempts).update(
            attempts=alert.attempts + 1,
            next_attempt_at=timezone.now() + timedelta(
                seconds=min(RETRY_BASE_SECONDS * 2 ** alert.attempts, RETRY_MAX_SECONDS)))
        if not claimed:
            continue
        try:
            # Receivers answer "ok", HTML or nothing: only the status tells (a resend would be a duplicate).
            request_json("POST", url, body=body, headers=headers, answer_json=False)
        except ConnectorError as exc:
            BudgetAlert.objects.filter(pk=alert.pk).update(last_error=str(exc)[:200])
            logger.warning("budget alert not sent", extra={"alert_id": alert.pk, "host": host(url),
                                                            "error": str(exc), "attempts": alert.attempts + 1})
            # The webhook is down or refusing: the rest wait for the next pass, their attempts kept,
            # rather than each waiting out a timeout (the embedded recovery loop runs this pass).
            break
        BudgetAlert.objects.filter(pk=alert.pk).update(sent_at=timezone.now(), last_error="")
        sent += 1
    return sent

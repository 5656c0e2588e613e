"""Recovery: re-enqueue what no worker is answering or delivering (lost broker messages, dead workers).

A message can be stranded when the broker loses its queue (Redis restarted without persistence),
when enqueueing failed after the message was committed (Redis down), or when a worker died holding
the claim. A stored reply can be stranded when its worker died before delivering it, or when the
gateway's own means of delivery (Redis under the channel layer) failed. ``requeue_stuck_messages``
finds both and queues ``run_agent`` / ``deliver_reply`` again; the runtime's claims (one conditional
UPDATE each, with a lease renewed while its holder lives) and the one-reply-per-message constraint
keep a message answered once and its reply sent once, even if the original task is still on its way.

A message waiting its turn behind an earlier one of its conversation stays ``accepted`` but carries
a lease while its task chain waits (``claims.claim``): it is not stranded, and is left alone.
"""
from __future__ import annotations

import logging
import threading
import time
from datetime import timedelta

from django.conf import settings
from django.db import close_old_connections
from django.db.models import Q, QuerySet
from django.utils import timezone

from apps.conversations.models import Direction, Message, Status
from apps.quotas import alerts
from apps.quotas.budgets import settle_unsettled

from . import hooks
from .claims import wait_lease
from .dispatch import enqueue_agent_run, enqueue_delivery

logger = logging.getLogger(__name__)


def stuck_messages(*, now=None) -> QuerySet[Message]:
    """Inbound messages accepted too long ago and never claimed, or claimed by a lease that ran out.

    Only messages younger than GATEWAY_REQUEUE_MAX_AGE_SECONDS are considered: a sender long gone
    is not answered hours later.
    """
    now = now or timezone.now()
    accepted_before = now - timedelta(seconds=settings.GATEWAY_REQUEUE_ACCEPTED_AFTER_SECONDS)
    return (
        Message.objects.filter(direction=Direction.INBOUND)
        .filter(created_at__gte=now - timedelta(seconds=settings.GATEWAY_REQUEUE_MAX_AGE_SECONDS))
        .filter(_unclaimed(now))
        .exclude(status=Status.ACCEPTED, created_at__gte=accepted_before)  # its task is likely on its way
        .exclude(hooks.handoff().in_open_handoff())  # held for a human on purpose, not stranded
        .order_by("created_at")
    )


def stuck_replies(*, now=None) -> QuerySet[Message]:
    """Agent replies stored and not delivered whose delivery lease ran out (their deliverer died,
    or delivery was deferred), or that never had one and are older than the accepted bound."""
    now = now or timezone.now()
    return (
        Message.objects.filter(direction=Direction.OUTBOUND, status=Status.PENDING, reply_to__isnull=False)
        .filter(created_at__gte=now - timedelta(seconds=settings.GATEWAY_REQUEUE_MAX_AGE_SECONDS))
        .filter(
            Q(lease_until__lt=now)
            | Q(lease_until__isnull=True,
                created_at__lt=now - timedelta(seconds=settings.GATEWAY_REQUEUE_ACCEPTED_AFTER_SECONDS))
        )
        .order_by("created_at")
    )


def _unclaimed(now) -> Q:
    """Accepted and nobody waiting on it (a waiting message's task chain keeps a lease on it), or
    claimed by a lease that ran out."""
    return (Q(status=Status.ACCEPTED) & (Q(lease_until__isnull=True) | Q(lease_until__lt=now))
            | Q(status=Status.PROCESSING, lease_until__lt=now))


def expire_stale_messages(*, now=None) -> int:
    """Mark ``failed`` (``expired``) the inbound messages nobody answered that are too old to be
    answered now (GATEWAY_REQUEUE_MAX_AGE_SECONDS): left queued by a server stopped longer than
    that, or stranded while recovery was not running. They would otherwise read as on their way
    for good, and hold up nothing but the dashboards' truth. The sender is not told a day late."""
    now = now or timezone.now()
    expired = (
        Message.objects.filter(direction=Direction.INBOUND,
                               created_at__lt=now - timedelta(seconds=settings.GATEWAY_REQUEUE_MAX_AGE_SECONDS))
        .filter(_unclaimed(now))
        .exclude(hooks.handoff().in_open_handoff())  # a human may still answer
        .update(status=Status.FAILED, lease_until=None, updated_at=now, error_code="expired",
                error_message="Not answered before it was too old to answer (GATEWAY_REQUEUE_MAX_AGE_SECONDS).")
    )
    if expired:
        logger.warning("expired messages too old to answer", extra={"count": expired})
    return expired


def requeue_stuck_messages(*, limit: int | None = None) -> int:
    """Queue a delivery for each stuck reply, then an agent run for each stuck message (oldest
    first, at most ``limit`` of each); returns how many were queued. Messages too old to answer
    are expired first (``expire_stale_messages``).

    Replies first: a stuck reply's lease has run out, so it no longer holds the next message of its
    conversation back, and that message's reply must not go out before it. (After a stop, the
    replies of the runs that finished on the way out wait here with the messages queued behind
    them: queued after those, 9 of 16 conversations got their answers out of order in a review.)
    """
    limit = limit or settings.GATEWAY_REQUEUE_BATCH_SIZE
    expire_stale_messages()
    replies = list(stuck_replies().values_list("pk", flat=True)[:limit])
    for reply_id in replies:
        enqueue_delivery(reply_id)
    if replies:
        logger.warning("re-enqueued undelivered replies", extra={"count": len(replies)})
    ids = list(stuck_messages().values_list("pk", flat=True)[:limit])
    for message_id in ids:
        enqueue_agent_run(message_id)
    if ids:
        logger.warning("re-enqueued stuck messages", extra={"count": len(ids)})
    return len(ids) + len(replies)


_embedded_started = False
_embedded_lock = threading.Lock()


def start_embedded_recovery() -> None:
    """The embedded default (no Celery beat): run the same recovery in the server process, once at
    startup and then every GATEWAY_REQUEUE_INTERVAL_SECONDS, on a daemon thread (once per process)."""
    global _embedded_started
    if _embedded_started or settings.GATEWAY_AGENT_DISPATCH == "celery" or not settings.GATEWAY_EMBEDDED_RECOVERY:
        return
    with _embedded_lock:
        if _embedded_started:
            return
        _embedded_started = True
        threading.Thread(target=_recover_forever, name="recovery", daemon=True).start()


_PROCESS_STARTED = timezone.now()


def release_leases_of_the_previous_process() -> int:
    """Embedded default, at startup: this server process is the only one answering (one SQLite
    file, one process), so a lease taken before it started is a previous process's, which died with
    its runs. Let those run out now rather than a whole lease later. (A lease this process took
    runs at least a lease past its start.) A message waiting its turn carries a wait lease for its
    task's next re-check, which the previous process's timer took with it."""
    now = timezone.now()
    run_lease = timedelta(seconds=settings.GATEWAY_AGENT_LEASE_SECONDS)
    taken_before_us = (Q(status__in=[Status.PROCESSING, Status.PENDING], lease_until__lt=_PROCESS_STARTED + run_lease)
                       | Q(status=Status.ACCEPTED, lease_until__lt=_PROCESS_STARTED + wait_lease()))
    return Message.objects.filter(taken_before_us, lease_until__gte=now).update(lease_until=now - timedelta(seconds=1))


def _recover_forever() -> None:
    try:
        released = release_leases_of_the_previous_process()
        if released:
            logger.warning("released the leases of the previous server process", extra={"count": released})
    except Exception:
        logger.exception("could not release the previous process's leases")
    while True:
        try:
            requeue_stuck_messages()
            settle_unsettled_usage()
            alerts.send_due()  # celery beat's quotas.send_budget_alerts, where there is no beat
        except Exception:
            logger.exception("recovery failed")
        finally:
            close_old_connections()
        time.sleep(settings.GATEWAY_REQUEUE_INTERVAL_SECONDS)


def settle_unsettled_usage() -> int:
    """Usage that a failed budget settle kept off the live counters reaches them (from the
    database's record of the calls) once the counters' store answers again."""
    try:
        settled = settle_unsettled()
    except Exception as exc:  # the store is still away: the next pass tries again
        logger.warning("budget counters still unreachable; unsettled usage kept", extra={"error": str(exc)[:200]})
        return 0
    if settled:
        logger.warning("settled usage that missed the budget counters", extra={"count": settled})
    return settled

"""Re-enqueue inbound messages that no worker is answering (lost broker messages, dead workers).

A message can be stranded when the broker loses its queue (Redis restarted without persistence),
when enqueueing failed after the message was committed (Redis down), or when a worker died holding
the claim. ``requeue_stuck_messages`` finds them and queues ``run_agent`` again; the runtime's claim
(one conditional UPDATE) and the one-reply-per-message constraint keep a message answered once even
if the original task is still on its way.
"""
from __future__ import annotations

import logging
from datetime import timedelta

from django.conf import settings
from django.db.models import Exists, OuterRef, Q, QuerySet
from django.utils import timezone

from apps.conversations.models import Direction, Message, Status

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
        .filter(
            Q(status=Status.ACCEPTED, created_at__lt=accepted_before)
            | Q(status=Status.PROCESSING, lease_until__lt=now)
        )
        .exclude(in_open_handoff())  # held for a human on purpose, not stranded
        .order_by("created_at")
    )


def in_open_handoff() -> Exists:
    from apps.routing.models import Handoff

    return Exists(Handoff.objects.filter(conversation_id=OuterRef("conversation_id"), ended_at__isnull=True))


def requeue_stuck_messages(*, limit: int | None = None) -> int:
    """Queue an agent run for each stuck message (oldest first, at most ``limit``); returns how many."""
    from .dispatch import enqueue_agent_run

    limit = limit or settings.GATEWAY_REQUEUE_BATCH_SIZE
    ids = list(stuck_messages().values_list("pk", flat=True)[:limit])
    for message_id in ids:
        enqueue_agent_run(message_id)
    if ids:
        logger.warning("re-enqueued stuck messages", extra={"count": len(ids)})
    return len(ids)

"""Celery tasks. They take ids and call a service; the service is idempotent under redelivery."""
from __future__ import annotations

from celery import shared_task
from django.conf import settings

from .recovery import requeue_stuck_messages
from .runtime import WaitingForEarlier, agent_run


def order_retries() -> int:
    """How many times a message re-checks for an earlier one of its conversation before going ahead."""
    return max(1, int(settings.GATEWAY_ORDER_MAX_WAIT_SECONDS / settings.GATEWAY_ORDER_RETRY_DELAY_SECONDS))


@shared_task(bind=True, name="agents.run_agent", acks_late=True, reject_on_worker_lost=True, ignore_result=True,
             max_retries=None)
def run_agent(self, message_id: str) -> None:
    """Answer one inbound message (no-op if it is already answered or being answered)."""
    try:
        agent_run(message_id, ignore_order=self.request.retries >= order_retries())
    except WaitingForEarlier as exc:
        raise self.retry(countdown=settings.GATEWAY_ORDER_RETRY_DELAY_SECONDS, exc=exc) from exc


@shared_task(name="agents.requeue_stuck_messages", ignore_result=True)
def requeue_stuck() -> int:
    """Periodic (CELERY_BEAT_SCHEDULE): queue runs for messages stranded in accepted/processing."""
    return requeue_stuck_messages()

"""Celery tasks. They take ids and call a service; the service is idempotent under redelivery."""
from __future__ import annotations

from celery import shared_task
from django.conf import settings

from .recovery import requeue_stuck_messages
from .runtime import WaitingForEarlier, agent_run


def order_retry_delay(retries: int) -> float:
    """How long a message waits before re-checking for an earlier one of its conversation: the
    first delay, doubling, capped. (The earlier message's run queues it as soon as it is done.)"""
    first = settings.GATEWAY_ORDER_RETRY_DELAY_SECONDS
    return min(first * 2 ** min(retries, 30), max(first, settings.GATEWAY_ORDER_RETRY_MAX_DELAY_SECONDS))


def order_retries() -> int:
    """How many re-checks add up to GATEWAY_ORDER_MAX_WAIT_SECONDS; after them the message goes ahead."""
    waited, retries = 0.0, 0
    while waited < settings.GATEWAY_ORDER_MAX_WAIT_SECONDS:
        waited += order_retry_delay(retries)
        retries += 1
    return max(1, retries)


@shared_task(bind=True, name="agents.run_agent", acks_late=True, reject_on_worker_lost=True, ignore_result=True,
             max_retries=None)
def run_agent(self, message_id: str) -> None:
    """Answer one inbound message (no-op if it is already answered or being answered)."""
    try:
        agent_run(message_id, ignore_order=self.request.retries >= order_retries())
    except WaitingForEarlier as exc:
        raise self.retry(countdown=order_retry_delay(self.request.retries), exc=exc) from exc


@shared_task(name="agents.requeue_stuck_messages", ignore_result=True)
def requeue_stuck() -> int:
    """Periodic (CELERY_BEAT_SCHEDULE): queue runs for messages stranded in accepted/processing."""
    return requeue_stuck_messages()

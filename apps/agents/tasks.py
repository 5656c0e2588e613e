"""Celery tasks. They take ids and call a service; the service is idempotent under redelivery."""
from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, replace

from celery import shared_task
from django.conf import settings
from django.db import close_old_connections

from .claims import WaitingForEarlier
from .delivery import deliver_pending
from .dispatch import DELIVER_REPLY, RUN_AGENT, runs_in_process
from .recovery import requeue_stuck_messages, settle_unsettled_usage
from .runtime import DatabaseUnavailable, agent_run, give_up_after_outage

logger = logging.getLogger(__name__)

# A run the database failed under is retried after 1, 2, 4, 8, then every 10 seconds, this many
# times (about three minutes); after that the message is failed and the sender told, or, while the
# database is still out, left to the periodic requeue task.
DATABASE_RETRIES = 20
DATABASE_RETRY_MAX_DELAY_SECONDS = 10.0


def database_retry_delay(retries: int) -> float:
    return min(2.0 ** min(retries, 30), DATABASE_RETRY_MAX_DELAY_SECONDS)


def give_up(message_id, claimed_attempt: int | None) -> None:
    """Out of database retries: fail the message and tell the sender, if the database answers."""
    try:
        give_up_after_outage(message_id, claimed_attempt)
    except Exception:
        logger.exception("database still unavailable; the message is left to the requeue task",
                         extra={"message_id": str(message_id)})


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


@dataclass(frozen=True)
class Tries:
    """Where a message's agent run stands between tries (the Celery task carries it as kwargs).

    Two kinds of retry, counted apart: waiting for an earlier message of the conversation, and the
    database failing mid-run (the next try first gives back the claim the failed one left).
    """

    order_waits: int = 0
    database_retries: int = 0
    release_attempt: int | None = None


def try_once(message_id, tries: Tries) -> tuple[float, Tries] | None:
    """Run the agent on the message once: None when that is the end of it, else how many seconds to
    wait and the next try. The Celery task and the embedded default's loop both go through here."""
    try:
        agent_run(message_id, ignore_order=tries.order_waits >= order_retries(), release_attempt=tries.release_attempt)
    except WaitingForEarlier:
        return order_retry_delay(tries.order_waits), replace(tries, order_waits=tries.order_waits + 1,
                                                             release_attempt=None)
    except DatabaseUnavailable as exc:
        if tries.database_retries >= DATABASE_RETRIES:
            give_up(message_id, exc.claimed_attempt)
            return None
        return database_retry_delay(tries.database_retries), replace(
            tries, database_retries=tries.database_retries + 1, release_attempt=exc.claimed_attempt)
    return None


@shared_task(bind=True, name=RUN_AGENT, acks_late=True, reject_on_worker_lost=True, ignore_result=True,
             max_retries=None)
def run_agent(self, message_id: str, **tries) -> None:
    """Answer one inbound message (no-op if it is already answered or being answered)."""
    again = try_once(message_id, Tries(**tries))
    if again is not None:
        delay, following = again
        raise self.retry(countdown=delay, args=(message_id,), kwargs=asdict(following))


@runs_in_process(RUN_AGENT)
def run_agent_in_process(message_id: str) -> None:
    """The embedded default's run_agent: the same tries, as a loop on its thread."""
    tries = Tries()
    try:
        while (again := try_once(message_id, tries)) is not None:
            delay, tries = again
            close_old_connections()
            time.sleep(delay)
    except Exception:
        logger.exception("embedded agent run failed", extra={"message_id": message_id})
    finally:
        close_old_connections()


@shared_task(name=DELIVER_REPLY, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def deliver_reply(reply_id: str) -> None:
    """Deliver a stored reply left pending (no-op if it is sent or another worker delivers it)."""
    deliver_pending(reply_id)


@runs_in_process(DELIVER_REPLY)
def deliver_reply_in_process(reply_id: str) -> None:
    """The embedded default's deliver_reply."""
    try:
        deliver_pending(reply_id)
    except Exception:
        logger.exception("embedded delivery failed", extra={"reply_id": reply_id})
    finally:
        close_old_connections()


@shared_task(name="agents.requeue_stuck_messages", ignore_result=True)
def requeue_stuck() -> int:
    """Periodic (CELERY_BEAT_SCHEDULE): queue runs for messages stranded in accepted/processing and
    deliveries for replies stranded in pending; settle usage a failed budget settle left out."""
    queued = requeue_stuck_messages()
    settle_unsettled_usage()
    return queued

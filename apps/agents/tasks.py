"""Celery tasks. They take ids and call a service; the service is idempotent under redelivery.

A message's run is tried again in three cases, counted apart: an earlier message of its
conversation is still being answered (WaitingForEarlier), the database failed mid-run
(DatabaseUnavailable), or other calls in flight hold what is left of a budget (BudgetHeld).
The pauses and limits are tenacity strategies. The task carries where it stands (``Tries``) as
kwargs and reschedules itself with ``self.retry(countdown=...)``, so a waiting message holds no
worker thread. (Celery's ``autoretry_for`` keeps one count and the same kwargs: these retries need
two counts, and a database retry carries the claim to give back.)
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, fields, replace

from celery import shared_task
from django.conf import settings
from django.db import close_old_connections
from tenacity import RetryCallState, stop_after_attempt, wait_exponential
from tenacity.stop import stop_base

from .claims import WaitingForEarlier
from .delivery import deliver_pending
from .dispatch import DELIVER_REPLY, RUN_AGENT, run_later, runs_in_process
from .orchestrator import BudgetHeld
from .recovery import requeue_stuck_messages, settle_unsettled_usage
from .runtime import DatabaseUnavailable, agent_run, give_up_after_outage

logger = logging.getLogger(__name__)

# A run the database failed under is retried after 1, 2, 4, 8, then every 10 seconds, this many
# times (about three minutes); after that the message is failed and the sender told, or, while the
# database is still out, left to the periodic requeue task.
DATABASE_RETRIES = 20
DATABASE_WAIT = wait_exponential(multiplier=1, max=10)
DATABASE_STOP = stop_after_attempt(DATABASE_RETRIES + 1)


# A run whose budget other calls in flight hold is tried again after 0.5, 1, 2, 4, then every 5
# seconds, until GATEWAY_QUOTA_BUSY_WAIT_SECONDS have passed since the first such try.
BUDGET_WAIT = wait_exponential(multiplier=0.5, max=5)


def order_wait() -> wait_exponential:
    """The pause before re-checking for an earlier message of the conversation: the first delay,
    doubling, capped. (The earlier message's run queues it as soon as it is done.)"""
    first = settings.GATEWAY_ORDER_RETRY_DELAY_SECONDS
    return wait_exponential(multiplier=first, max=max(first, settings.GATEWAY_ORDER_RETRY_MAX_DELAY_SECONDS))


def order_stop() -> stop_base:
    """When a message stops waiting its turn and is answered anyway: after at least one re-check,
    once it has waited GATEWAY_ORDER_MAX_WAIT_SECONDS (``ignores_order``)."""
    return stop_after_attempt(1) & stop_when_waited(settings.GATEWAY_ORDER_MAX_WAIT_SECONDS)


class stop_when_waited(stop_base):  # noqa: N801  (named like tenacity's own strategies)
    """Stop once the pauses so far (tenacity's ``idle_for``) add up to ``seconds``."""

    def __init__(self, seconds: float):
        self.seconds = seconds

    def __call__(self, retry_state: RetryCallState) -> bool:
        return retry_state.idle_for >= self.seconds


@dataclass(frozen=True)
class Tries:
    """Where a message's agent run stands between tries (the Celery task carries it as kwargs):
    tries that found an earlier message in flight, the pauses between them in all, and when the
    first of them was (epoch seconds); tries the database failed under, and the claim the last one
    left (the next try gives it back first); tries that found a budget held by calls in flight, and
    when the first of them was."""

    order_waits: int = 0
    order_waited: float = 0.0
    waiting_since: float | None = None
    database_retries: int = 0
    release_attempt: int | None = None
    budget_waits: int = 0
    budget_since: float | None = None

    @classmethod
    def carried(cls, kwargs: dict) -> Tries:
        """The tries a task carries, leaving out fields this version does not know: a re-check a
        newer worker queued still runs on an older one during a rolling deploy or a rollback."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            logger.warning("run_agent: ignoring unknown tries %s", unknown)
        return cls(**{name: value for name, value in kwargs.items() if name in known})


def _retry_state(failed_tries: int, waited: float = 0.0) -> RetryCallState:
    """tenacity's view of a chain of tries the task carries across Celery retries."""
    state = RetryCallState(None, None, (), {})
    state.attempt_number, state.idle_for = failed_tries, waited
    return state


def ignores_order(tries: Tries) -> bool:
    """Whether this try goes ahead of an earlier message. The wait counts from the first try that
    found one, as the clock runs: a re-check queued behind other work (a busy pool, a deep broker
    queue) waits longer than its pause, and counting the pauses alone let an overloaded gateway
    hold a message several times the longest wait."""
    waited = tries.order_waited
    if tries.waiting_since is not None:
        waited = max(waited, time.time() - tries.waiting_since)
    return order_stop()(_retry_state(tries.order_waits, waited))


def after_order_wait(tries: Tries) -> tuple[float, Tries]:
    """The pause before the next try, and that try, after one that found an earlier message."""
    delay = order_wait()(_retry_state(tries.order_waits + 1))
    return delay, replace(tries, order_waits=tries.order_waits + 1, order_waited=tries.order_waited + delay,
                          waiting_since=tries.waiting_since if tries.waiting_since is not None else time.time(),
                          release_attempt=None)


def after_outage(tries: Tries, claimed_attempt: int | None) -> tuple[float, Tries] | None:
    """The pause before the next try, and that try, after one the database failed under; None
    once the retries are used up."""
    failed = _retry_state(tries.database_retries + 1)
    if DATABASE_STOP(failed):
        return None
    return DATABASE_WAIT(failed), replace(tries, database_retries=tries.database_retries + 1,
                                          release_attempt=claimed_attempt)


def waits_for_budget(tries: Tries) -> bool:
    """Whether this try, finding a budget held by calls in flight, may be tried again later."""
    return tries.budget_since is None or time.time() - tries.budget_since < settings.GATEWAY_QUOTA_BUSY_WAIT_SECONDS


def after_budget_wait(tries: Tries) -> tuple[float, Tries]:
    """The pause before the next try, and that try, after one that found a budget held."""
    delay = BUDGET_WAIT(_retry_state(tries.budget_waits + 1))
    return delay, replace(tries, budget_waits=tries.budget_waits + 1, release_attempt=None,
                          budget_since=tries.budget_since if tries.budget_since is not None else time.time())


def give_up(message_id, claimed_attempt: int | None) -> None:
    """Out of database retries: fail the message and tell the sender, if the database answers."""
    try:
        give_up_after_outage(message_id, claimed_attempt)
    except Exception:
        logger.exception("database still unavailable; the message is left to the requeue task",
                         extra={"message_id": str(message_id)})


def try_once(message_id, tries: Tries) -> tuple[float, Tries] | None:
    """Run the agent on the message once: None when that is the end of it, else how many seconds to
    wait and the next try. The Celery task and the embedded default's loop both go through here."""
    try:
        agent_run(message_id, ignore_order=ignores_order(tries), release_attempt=tries.release_attempt,
                  wait_for_budget=waits_for_budget(tries))
    except WaitingForEarlier:
        return after_order_wait(tries)
    except BudgetHeld:
        return after_budget_wait(tries)
    except DatabaseUnavailable as exc:
        again = after_outage(tries, exc.claimed_attempt)
        if again is None:
            give_up(message_id, exc.claimed_attempt)
        return again
    return None


@shared_task(bind=True, name=RUN_AGENT, acks_late=True, reject_on_worker_lost=True, ignore_result=True,
             max_retries=None)
def run_agent(self, message_id: str, **tries) -> None:
    """Answer one inbound message (no-op if it is already answered or being answered)."""
    again = try_once(message_id, Tries.carried(tries))
    if again is not None:
        delay, following = again
        raise self.retry(countdown=delay, args=(message_id,), kwargs=asdict(following))


@runs_in_process(RUN_AGENT)
def run_agent_in_process(message_id: str, tries: Tries | None = None) -> None:
    """The embedded default's run_agent: the same tries; between two, the message waits on the
    dispatcher's timer, not on a pool thread (as a Celery retry waits in the broker)."""
    try:
        again = try_once(message_id, tries or Tries())
        if again is not None:
            delay, following = again
            run_later(delay, RUN_AGENT, message_id, following)
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

"""Hand an accepted message to an agent run: a Celery task, or in-process in the embedded default."""
from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor

from django.conf import settings
from django.db import close_old_connections
from kombu.exceptions import OperationalError as BrokerOperationalError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

logger = logging.getLogger(__name__)

_embedded_pool: ThreadPoolExecutor | None = None
BROKER_ERRORS = (BrokerOperationalError, RedisConnectionError, RedisTimeoutError, ConnectionError)


def enqueue_agent_run(message_id) -> None:
    """Queue ``run_agent(message_id)``. Call after the message is committed (on_commit)."""
    from .tasks import run_agent

    if settings.GATEWAY_AGENT_DISPATCH == "celery":
        try:
            run_agent.delay(str(message_id))
        except BROKER_ERRORS:
            # The message is committed: the periodic requeue task (apps.agents.recovery) queues it
            # once the broker is back, so the sender's "accepted" still means "will be answered".
            logger.warning("broker unavailable; message left for requeue", extra={"message_id": str(message_id)})
        return
    # Embedded default: no broker. Run on a thread pool so the caller (often the event loop's
    # helper thread) returns at once, as it would with a real queue.
    global _embedded_pool
    if _embedded_pool is None:
        _embedded_pool = ThreadPoolExecutor(
            max_workers=settings.GATEWAY_EMBEDDED_WORKERS, thread_name_prefix="agent"
        )
    _embedded_pool.submit(_run_embedded, str(message_id))


def _run_embedded(message_id: str) -> None:
    import time

    from .runtime import DatabaseUnavailable, WaitingForEarlier, agent_run
    from .tasks import DATABASE_RETRIES, database_retry_delay, give_up, order_retries, order_retry_delay

    # The Celery task's retry rules, as a loop: wait for an earlier message of the conversation,
    # and retry a run the database failed under.
    order_waits = database_retries = 0
    release_attempt = None
    try:
        while True:
            try:
                agent_run(message_id, ignore_order=order_waits >= order_retries(), release_attempt=release_attempt)
                return
            except WaitingForEarlier:
                time.sleep(order_retry_delay(order_waits))
                order_waits += 1
                release_attempt = None
            except DatabaseUnavailable as exc:
                close_old_connections()
                if database_retries >= DATABASE_RETRIES:
                    give_up(message_id, exc.claimed_attempt)
                    return
                time.sleep(database_retry_delay(database_retries))
                database_retries += 1
                release_attempt = exc.claimed_attempt
    except Exception:
        logger.exception("embedded agent run failed", extra={"message_id": message_id})
    finally:
        close_old_connections()

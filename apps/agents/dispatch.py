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
    from gateway_project.celery import publish_declare

    from .tasks import run_agent

    if settings.GATEWAY_AGENT_DISPATCH == "celery":
        try:
            # The message goes straight to the queue (the default exchange). On Redis nothing is
            # declared (the worker declares the queue; a list needs no declaring); on RabbitMQ the
            # queue is declared once per connection, or the first runs would be dropped.
            run_agent.apply_async((str(message_id),), declare=publish_declare())
        except BROKER_ERRORS:
            # The message is committed: the periodic requeue task (apps.agents.recovery) queues it
            # once the broker is back, so the sender's "accepted" still means "will be answered".
            logger.warning("broker unavailable; message left for requeue", extra={"message_id": str(message_id)})
        return
    # Embedded default: no broker. Run on a thread pool so the caller (often the event loop's
    # helper thread) returns at once, as it would with a real queue.
    _embedded().submit(_run_embedded, str(message_id))


def enqueue_delivery(reply_id) -> None:
    """Queue ``deliver_reply(reply_id)`` (recovery of a reply stored and not delivered)."""
    from .tasks import deliver_reply

    if settings.GATEWAY_AGENT_DISPATCH == "celery":
        try:
            deliver_reply.apply_async((str(reply_id),), declare=[])
        except BROKER_ERRORS:
            logger.warning("broker unavailable; reply left for recovery", extra={"reply_id": str(reply_id)})
        return
    _embedded().submit(_deliver_embedded, str(reply_id))


def _embedded() -> ThreadPoolExecutor:
    global _embedded_pool
    if _embedded_pool is None:
        _embedded_pool = ThreadPoolExecutor(
            max_workers=settings.GATEWAY_EMBEDDED_WORKERS, thread_name_prefix="agent"
        )
    return _embedded_pool


def _deliver_embedded(reply_id: str) -> None:
    from .runtime import deliver_pending

    try:
        deliver_pending(reply_id)
    except Exception:
        logger.exception("embedded delivery failed", extra={"reply_id": reply_id})
    finally:
        close_old_connections()


def _run_embedded(message_id: str) -> None:
    import time

    from .tasks import Tries, try_once

    tries = Tries()  # the Celery task's retry rules, as a loop
    try:
        while (again := try_once(message_id, tries)) is not None:
            delay, tries = again
            close_old_connections()
            time.sleep(delay)
    except Exception:
        logger.exception("embedded agent run failed", extra={"message_id": message_id})
    finally:
        close_old_connections()

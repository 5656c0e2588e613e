"""Hand an accepted message to an agent run: a Celery task, or in-process in the embedded default.

Tasks are found by name, not imported: an agent run queues the conversation's next message, so this
module sits below the runtime and the tasks that use it. ``apps.agents.tasks`` defines the Celery
tasks and registers their in-process twins with ``runs_in_process``; the app's ``ready()`` imports it.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from django.conf import settings
from kombu.exceptions import OperationalError as BrokerOperationalError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway_project.celery import app, publish_declare

logger = logging.getLogger(__name__)

RUN_AGENT = "agents.run_agent"
DELIVER_REPLY = "agents.deliver_reply"
BROKER_ERRORS = (BrokerOperationalError, RedisConnectionError, RedisTimeoutError, ConnectionError)

_in_process: dict[str, Callable[[str], None]] = {}
_embedded_pool: ThreadPoolExecutor | None = None


def runs_in_process(task_name: str) -> Callable[[Callable[[str], None]], Callable[[str], None]]:
    """Register what the embedded default runs on its thread pool in place of the task ``task_name``."""
    def register(function: Callable[[str], None]) -> Callable[[str], None]:
        _in_process[task_name] = function
        return function
    return register


def enqueue_agent_run(message_id) -> None:
    """Queue ``run_agent(message_id)``. Call after the message is committed (on_commit)."""
    if settings.GATEWAY_AGENT_DISPATCH == "celery":
        try:
            # The message goes straight to the queue (the default exchange). On Redis nothing is
            # declared (the worker declares the queue; a list needs no declaring); on RabbitMQ the
            # queue is declared once per connection, or the first runs would be dropped.
            app.tasks[RUN_AGENT].apply_async((str(message_id),), declare=publish_declare())
        except BROKER_ERRORS:
            # The message is committed: the periodic requeue task (apps.agents.recovery) queues it
            # once the broker is back, so the sender's "accepted" still means "will be answered".
            logger.warning("broker unavailable; message left for requeue", extra={"message_id": str(message_id)})
        return
    # Embedded default: no broker. Run on a thread pool so the caller (often the event loop's
    # helper thread) returns at once, as it would with a real queue.
    _embedded().submit(_in_process[RUN_AGENT], str(message_id))


def enqueue_delivery(reply_id) -> None:
    """Queue ``deliver_reply(reply_id)`` (recovery of a reply stored and not delivered)."""
    if settings.GATEWAY_AGENT_DISPATCH == "celery":
        try:
            app.tasks[DELIVER_REPLY].apply_async((str(reply_id),), declare=[])
        except BROKER_ERRORS:
            logger.warning("broker unavailable; reply left for recovery", extra={"reply_id": str(reply_id)})
        return
    _embedded().submit(_in_process[DELIVER_REPLY], str(reply_id))


def _embedded() -> ThreadPoolExecutor:
    global _embedded_pool
    if _embedded_pool is None:
        _embedded_pool = ThreadPoolExecutor(
            max_workers=settings.GATEWAY_EMBEDDED_WORKERS, thread_name_prefix="agent"
        )
    return _embedded_pool

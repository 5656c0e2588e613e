"""Celery tasks. They take ids and call a service; the service is idempotent under redelivery."""
from __future__ import annotations

from celery import shared_task

from .runtime import agent_run


@shared_task(name="agents.run_agent", acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def run_agent(message_id: str) -> None:
    """Answer one inbound message (no-op if it is already answered or being answered)."""
    agent_run(message_id)

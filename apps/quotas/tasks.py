"""Beat tasks of the quotas (schedules in settings.CELERY_BEAT_SCHEDULE)."""
from __future__ import annotations

from celery import shared_task

from .alerts import send_due


@shared_task(name="quotas.send_budget_alerts", ignore_result=True)
def send_budget_alerts() -> int:
    """Send the budget alerts due to GATEWAY_BUDGET_ALERT_WEBHOOK_URL (none set: nothing)."""
    return send_due()

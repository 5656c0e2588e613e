"""Beat tasks of the logs (schedules in settings.CELERY_BEAT_SCHEDULE)."""
from __future__ import annotations

from celery import shared_task
from django.conf import settings

from .request_log import request_log_flush
from .rollups import purge_old_logs, recent_days, rollup_days


@shared_task(name="logs.flush_request_logs", ignore_result=True)
def flush_request_logs() -> int:
    """Write the buffered request-log rows in batches."""
    return request_log_flush()


@shared_task(name="logs.rollup_daily", ignore_result=True)
def rollup_daily() -> None:
    """Rebuild the daily rollups of the last GATEWAY_LOG_ROLLUP_DAYS days."""
    request_log_flush()
    rollup_days(recent_days(), lag_seconds=settings.GATEWAY_LOG_ROLLUP_LAG_SECONDS)


@shared_task(name="logs.purge_old_logs", ignore_result=True)
def purge_old_logs_task() -> dict:
    """Delete raw log rows past their retention."""
    return purge_old_logs()

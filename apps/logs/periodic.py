"""The embedded default's stand-in for Celery beat: the logs' periodic jobs on a daemon thread.

Services mode runs them as beat tasks (settings.CELERY_BEAT_SCHEDULE). With no broker, the
server process starts this thread once (gateway_project.asgi) so request logs are flushed and
rollups rebuilt on a laptop too.
"""
from __future__ import annotations

import logging
import threading
import time

from django.conf import settings
from django.db import close_old_connections

logger = logging.getLogger(__name__)

_started = False
_start_lock = threading.Lock()


def start_embedded_periodic() -> None:
    """Start the thread once per process, on the embedded default only."""
    global _started
    if _started or settings.GATEWAY_AGENT_DISPATCH == "celery":
        return
    with _start_lock:
        if _started:
            return
        _started = True
        threading.Thread(target=_run_forever, name="logs-periodic", daemon=True).start()


def _run_forever() -> None:
    from .request_log import request_log_flush
    from .rollups import purge_old_logs, recent_days, rollup_days

    jobs = [
        (settings.GATEWAY_LOG_FLUSH_SECONDS, request_log_flush),
        (settings.GATEWAY_LOG_ROLLUP_SECONDS,
         lambda: rollup_days(recent_days(), lag_seconds=settings.GATEWAY_LOG_ROLLUP_LAG_SECONDS)),
        (settings.GATEWAY_LOG_PURGE_SECONDS, purge_old_logs),
    ]
    due = [time.monotonic() + every for every, _job in jobs]
    while True:
        time.sleep(max(0.1, min(due) - time.monotonic()))
        for index, (every, job) in enumerate(jobs):
            if time.monotonic() >= due[index]:
                try:
                    job()
                except Exception:
                    logger.exception("periodic logs job failed")
                finally:
                    close_old_connections()
                due[index] = time.monotonic() + every

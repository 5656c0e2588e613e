"""LOG_LEVEL governs the gateway's own logs and Celery's per-task lines in a worker too, whose
``-l`` sets only the root logger (the bench runs its worker with LOG_LEVEL=WARNING and ``-l INFO``)."""
import json
import os
import subprocess
import sys

from django.conf import settings

PROBE = """
import json, logging, django
django.setup()
from gateway_project.celery import app
app.log.setup(loglevel="INFO")  # what `celery worker -l INFO` does to logging
names = ["apps.agents.runtime", "gateway_project.db", "celery.app.trace", "celery.worker.strategy",
         "celery.worker.consumer.consumer"]
print(json.dumps({name: logging.getLogger(name).isEnabledFor(logging.INFO) for name in names}))
"""


def info_enabled(log_level: str) -> dict:
    env = {**os.environ, "LOG_LEVEL": log_level, "DJANGO_SETTINGS_MODULE": "gateway_project.settings"}
    done = subprocess.run([sys.executable, "-c", PROBE], cwd=settings.BASE_DIR, env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_worker_at_info_keeps_the_gateways_and_per_task_lines_at_log_level():
    enabled = info_enabled("WARNING")
    assert enabled.pop("celery.worker.consumer.consumer") is True  # "celery@host ready." still logged
    assert enabled == {name: False for name in enabled}


def test_at_info_the_worker_logs_as_before():
    assert all(info_enabled("INFO").values())

"""Celery application: configured from Django settings under the CELERY_ namespace."""
import os

from celery import Celery
from celery.signals import worker_process_init, worker_ready

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "gateway_project.settings")

app = Celery("gateway_project")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@worker_ready.connect
@worker_process_init.connect
def tune_gc(**_kwargs) -> None:
    """The worker (threads pool) or each pool process (prefork) has loaded what it keeps."""
    from gateway_project.gc_tuning import tune_for_serving

    tune_for_serving()


@worker_ready.connect
def serve_metrics(sender, **_kwargs) -> None:
    """This worker's prometheus-client counters on GATEWAY_WORKER_METRICS_PORT (0: off)."""
    from apps.logs.metrics import serve_worker_metrics

    serve_worker_metrics(sender.controller.pool_cls)

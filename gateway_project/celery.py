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

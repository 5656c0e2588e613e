"""Celery application: configured from Django settings under the CELERY_ namespace."""
import functools
import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "gateway_project.settings")

app = Celery("gateway_project")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


def publish_declare() -> list | None:
    """The ``declare`` argument for publishing an agent run (apps.agents.dispatch).

    AMQP (RabbitMQ): ``None``, Celery's default: the task's durable queue is declared before the
    first publish on each broker connection (kombu remembers it per connection, and declares again
    after a reconnect). RabbitMQ drops a message routed to a queue that does not exist yet, so
    without it the first runs after a fresh start, published before any worker declared the queue,
    were lost. Redis (and the in-memory transport): ``[]``, nothing: a list comes into being on the
    first push, and skipping the declaration saves binding a copy of the queue on every publish.
    """
    return None if _broker_has_exchanges() else []


@functools.cache
def _broker_has_exchanges() -> bool:
    return app.connection_for_write().transport.driver_type == "amqp"  # no connection is opened

"""The floor bench's Celery task: wake the waiter on the reply bus, nothing else."""
import redis
from celery import shared_task
from django.conf import settings

_client: redis.Redis | None = None


@shared_task(name="bench.floor.wake", ignore_result=True)
def wake(channel: str) -> None:
    global _client
    if _client is None:
        _client = redis.Redis.from_url(settings.REDIS_URL)
    _client.publish(channel, b"1")

"""The floor bench's Celery tasks: wake the waiters on the reply bus, nothing else."""
import redis
from celery import shared_task
from django.conf import settings

_client: redis.Redis | None = None


def _redis() -> redis.Redis:
    global _client
    if _client is None:
        _client = redis.Redis.from_url(settings.REDIS_URL)
    return _client


@shared_task(name="bench.floor.wake", ignore_result=True)
def wake(channel: str) -> None:
    _redis().publish(channel, b"1")


@shared_task(name="bench.floor.wake_many", ignore_result=True)
def wake_many(channels: list[str]) -> None:
    """One task for several messages: their wake-ups in one pipelined round trip."""
    pipe = _redis().pipeline(transaction=False)
    for channel in channels:
        pipe.publish(channel, b"1")
    pipe.execute()

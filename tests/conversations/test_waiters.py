"""A reply waiter leaves nothing behind in the channel layer: not after reading its reply, not
after a timeout, not when its caller is cancelled, not with an event left unread. Before, each
waiter that read its reply kept its Redis subscription and queue for the life of the server."""
import asyncio
import time
import uuid

import pytest
import redis
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer

from apps.conversations.realtime import publish, reply_group
from apps.conversations.waiters import ReplyWaiter

REPLY = {"type": "agent.reply", "message": "hello"}


async def read_the_reply(message_id):
    async with ReplyWaiter(message_id) as waiter:
        await sync_to_async(publish)(reply_group(message_id), REPLY)  # as the worker publishes it
        assert (await waiter.final_event(10))["message"] == "hello"


async def time_out(message_id):
    async with ReplyWaiter(message_id) as waiter:
        with pytest.raises(TimeoutError):
            await waiter.next_event(0.05)
        with pytest.raises(TimeoutError):
            await waiter.next_event(0)


async def be_cancelled(message_id):
    async def wait():
        async with ReplyWaiter(message_id) as waiter:
            entered.set()
            await waiter.next_event(30)

    entered = asyncio.Event()
    task = asyncio.ensure_future(wait())
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def leave_an_event_unread(message_id):
    async with ReplyWaiter(message_id) as waiter:
        await sync_to_async(publish)(reply_group(message_id), {"type": "agent.delta", "delta": "hel"})
        await sync_to_async(publish)(reply_group(message_id), REPLY)
        assert (await waiter.next_event(10))["type"] == "agent.delta"
        # the reply is on its way (or queued) and never read
    await asyncio.sleep(0)


WAYS = [read_the_reply, time_out, be_cancelled, leave_an_event_unread]


@pytest.fixture
def in_memory_layer(settings):
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    return get_channel_layer()


@pytest.mark.parametrize("way", WAYS, ids=lambda way: way.__name__)
async def test_the_in_memory_layer_keeps_no_channel_or_group(in_memory_layer, way):
    await way(uuid.uuid4())
    assert in_memory_layer.channels == {}
    assert in_memory_layer.groups == {}


@pytest.fixture
def pubsub_prefix(settings):
    if not settings.REDIS_URL:
        pytest.skip("needs Redis: set REDIS_URL (as .ci/run does)")
    prefix = f"waiters{uuid.uuid4().hex[:8]}"  # this test's own Redis channels
    settings.CHANNEL_LAYERS = {"default": {
        "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
        "CONFIG": {"hosts": [{"address": settings.REDIS_URL}], "prefix": prefix}}}
    return prefix


def subscribed(prefix: str, count: int) -> list[str]:
    """The Redis channels of ``prefix`` someone listens on, once there are ``count`` of them (or
    after 5 s): another connection may ask before Redis has read what the layer's connection sent."""
    from django.conf import settings

    client = redis.Redis.from_url(settings.REDIS_URL)
    deadline = time.monotonic() + 5
    while True:
        channels = sorted(c.decode() for c in client.pubsub_channels(f"{prefix}*"))
        if len(channels) == count or time.monotonic() > deadline:
            return channels
        time.sleep(0.02)


@pytest.mark.services
@pytest.mark.parametrize("way", WAYS, ids=lambda way: way.__name__)
async def test_redis_keeps_no_subscription(pubsub_prefix, way):
    message_id = uuid.uuid4()
    async with ReplyWaiter(uuid.uuid4()):
        assert len(await sync_to_async(subscribed)(pubsub_prefix, 2)) == 2  # its channel and its group
    assert await sync_to_async(subscribed)(pubsub_prefix, 0) == []
    await way(message_id)
    assert await sync_to_async(subscribed)(pubsub_prefix, 0) == []

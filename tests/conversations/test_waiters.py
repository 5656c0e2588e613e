"""A reply waiter leaves nothing behind in the channel layer: not after reading its reply, not
after a timeout, not when its caller is cancelled, not with an event left unread. Before, each
waiter that read its reply kept its Redis subscription and queue for the life of the server."""
import asyncio
import uuid

import pytest
import redis
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer

from apps.conversations import waiters
from apps.conversations.realtime import publish, reply_group
from apps.conversations.waiters import ReplyWaiter
from apps.core.errors import ServiceUnavailable
from tests.helpers import wait_until

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

    def channels() -> list[str]:
        return sorted(c.decode() for c in client.pubsub_channels(f"{prefix}*"))

    wait_until(lambda: len(channels()) == count, timeout=5, interval=0.02)
    return channels()


@pytest.mark.services
@pytest.mark.parametrize("way", WAYS, ids=lambda way: way.__name__)
async def test_redis_keeps_no_subscription(pubsub_prefix, way):
    message_id = uuid.uuid4()
    async with ReplyWaiter(uuid.uuid4()):
        assert len(await sync_to_async(subscribed)(pubsub_prefix, 2)) == 2  # its channel and its group
    assert await sync_to_async(subscribed)(pubsub_prefix, 0) == []
    await way(message_id)
    assert await sync_to_async(subscribed)(pubsub_prefix, 0) == []


class Held:
    """The layer's ``group_add`` or ``group_discard`` held at a gate (or failing), so that a test
    can act at that point: the layer itself is the real one."""

    def __init__(self, monkeypatch, layer, name: str, *, fail: bool = False):
        self.reached, self.gate = asyncio.Event(), asyncio.Event()
        real = getattr(layer, name)

        async def held(*args):
            self.reached.set()
            await self.gate.wait()
            if fail:
                raise ConnectionError("Redis went away")
            return await real(*args)

        monkeypatch.setattr(layer, name, held)


async def settled():
    """Every join and leave under way has ended."""
    while waiters._background:
        await asyncio.gather(*list(waiters._background), return_exceptions=True)


async def cancel_while_joining(monkeypatch):
    held = Held(monkeypatch, get_channel_layer(), "group_add")
    entering = asyncio.ensure_future(ReplyWaiter(uuid.uuid4()).__aenter__())
    await held.reached.wait()  # its channel is open; it is joining the group
    entering.cancel()
    with pytest.raises(asyncio.CancelledError):
        await entering
    held.gate.set()
    await settled()
    assert waiters._in_flight == 0


async def leave_while_the_group_cannot_be_left(monkeypatch, message_id):
    held = Held(monkeypatch, get_channel_layer(), "group_discard", fail=True)
    held.gate.set()
    async with ReplyWaiter(message_id) as waiter:
        with pytest.raises(TimeoutError):
            await waiter.next_event(0.01)
    await settled()


async def test_a_waiter_cancelled_while_joining_leaves_nothing_in_memory(in_memory_layer, monkeypatch):
    await cancel_while_joining(monkeypatch)
    assert in_memory_layer.channels == {}
    assert in_memory_layer.groups == {}


@pytest.mark.services
async def test_redis_keeps_no_channel_of_a_waiter_cancelled_while_joining(pubsub_prefix, monkeypatch):
    await cancel_while_joining(monkeypatch)
    assert await sync_to_async(subscribed)(pubsub_prefix, 0) == []


@pytest.mark.services
async def test_a_waiter_that_cannot_leave_its_group_still_closes_its_channel(pubsub_prefix, monkeypatch):
    message_id = uuid.uuid4()
    await leave_while_the_group_cannot_be_left(monkeypatch, message_id)
    # The group stays (the stand-in failure kept the layer from dropping it); the channel is closed.
    group = f"{pubsub_prefix}__group__{reply_group(message_id)}"
    assert await sync_to_async(subscribed)(pubsub_prefix, 1) == [group]


async def test_joins_held_up_by_the_layer_keep_counting_against_the_limit(in_memory_layer, monkeypatch, settings):
    """Clients that give up while their waiter's join hangs (Redis not answering) do not free
    their place: past the limit the next request is refused, not one more hung join."""
    settings.GATEWAY_MAX_WAITERS_PER_PROCESS = 2
    held = Held(monkeypatch, in_memory_layer, "group_add")
    entering = [asyncio.ensure_future(ReplyWaiter(uuid.uuid4()).__aenter__()) for _ in range(2)]
    await held.reached.wait()
    for task in entering:
        task.cancel()
    await asyncio.gather(*entering, return_exceptions=True)
    third = asyncio.ensure_future(ReplyWaiter(uuid.uuid4()).__aenter__())
    await asyncio.sleep(0)  # a refusal comes before the join's first step
    try:
        assert third.done() and isinstance(third.exception(), ServiceUnavailable)
    finally:
        third.cancel()
        held.gate.set()  # the layer answers again: the joins end, and their waiters leave
        await settled()
    assert waiters._in_flight == 0
    async with ReplyWaiter(uuid.uuid4()):
        assert waiters._in_flight == 1
    assert in_memory_layer.channels == {} and in_memory_layer.groups == {}


async def test_leaving_twice_gives_back_one_place(in_memory_layer):
    waiter = await ReplyWaiter(uuid.uuid4()).__aenter__()
    await waiter.__aexit__(None, None, None)
    await waiter.__aexit__(None, None, None)
    assert waiters._in_flight == 0

"""Reply waiters: each hears the events of its own message, through its server's one inbox, and a
request costs the channel layer nothing. Before, each waiter opened a channel and joined a group of
its own (two Redis subscriptions per request, and each one leaked until closed by hand)."""
import asyncio
import types
import uuid

import pytest
import redis
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer

from apps.conversations import realtime, waiters
from apps.conversations.realtime import INBOX_KEY, to_waiter
from apps.conversations.waiters import ReplyWaiter
from apps.core.errors import ServiceUnavailable
from tests.helpers import wait_until


def inbound(message_id, waiter: ReplyWaiter | None):
    """A stored message as the agent run sees it: its id, and the inbox its request named."""
    return types.SimpleNamespace(id=message_id, control={INBOX_KEY: waiter.inbox_name} if waiter else {})


async def publish(message, event):
    await sync_to_async(to_waiter)(message, event)  # from a worker's thread, as the run sends it


@pytest.fixture
def in_memory_layer(settings):
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    return get_channel_layer()


@pytest.fixture
def pubsub_prefix(settings):
    if not settings.REDIS_URL:
        pytest.skip("needs Redis: set REDIS_URL (as .ci/run does)")
    prefix = f"waiters{uuid.uuid4().hex[:8]}"  # this test's own Redis channels
    settings.CHANNEL_LAYERS = {"default": {
        "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
        "CONFIG": {"hosts": [{"address": settings.REDIS_URL}], "prefix": prefix}}}
    return prefix


@pytest.fixture(params=["in_memory", pytest.param("redis", marks=pytest.mark.services)])
def layer(request):
    return request.getfixturevalue("in_memory_layer" if request.param == "in_memory" else "pubsub_prefix")


def subscribed(prefix: str, count: int) -> list[str]:
    """The Redis channels of ``prefix`` someone listens on, once there are ``count`` of them (or
    after 5 s): another connection may ask before Redis has read what the layer's connection sent."""
    from django.conf import settings

    client = redis.Redis.from_url(settings.REDIS_URL)

    def channels() -> list[str]:
        return sorted(c.decode() for c in client.pubsub_channels(f"{prefix}*"))

    wait_until(lambda: len(channels()) == count, timeout=5, interval=0.02)
    return channels()


async def test_each_waiter_hears_its_own_message_in_order(layer):
    ids = [uuid.uuid4() for _ in range(3)]
    async with ReplyWaiter(ids[0]) as a, ReplyWaiter(ids[1]) as b, ReplyWaiter(ids[1]) as b_again:
        assert a.inbox_name == b.inbox_name  # one inbox for the process
        for piece in ("he", "llo"):
            for message_id, waiter in zip(ids[:2], (a, b), strict=True):
                await publish(inbound(message_id, waiter), {"type": "agent.delta", "delta": f"{piece}{message_id}"})
        await publish(inbound(ids[2], a), {"type": "agent.reply", "message": "nobody waits for this one"})
        await publish(inbound(ids[0], a), {"type": "agent.reply", "message": "for a"})
        await publish(inbound(ids[1], b), {"type": "agent.reply", "message": "for b"})
        assert [(await a.next_event(10)).get("delta") for _ in range(2)] == [f"he{ids[0]}", f"llo{ids[0]}"]
        assert (await a.final_event(10))["message"] == "for a"
        for waiter in (b, b_again):  # a resent request in the same process hears it too
            assert (await waiter.final_event(10))["message"] == "for b"
        with pytest.raises(TimeoutError):
            await a.next_event(0.05)
    assert waiters.inbox().waiters == {}


async def test_a_message_nobody_waits_for_sends_nothing(in_memory_layer):
    message_id = uuid.uuid4()
    async with ReplyWaiter(message_id) as waiter:
        await publish(inbound(message_id, None), {"type": "agent.reply", "message": "unheard"})
        with pytest.raises(TimeoutError):
            await waiter.next_event(0.1)


@pytest.mark.services
async def test_redis_holds_one_subscription_however_many_requests_wait(pubsub_prefix):
    async def one_request(i):
        message_id = uuid.uuid4()
        async with ReplyWaiter(message_id) as waiter:
            if i % 3:
                await publish(inbound(message_id, waiter), {"type": "agent.reply", "message": "hi"})
            if i % 3 == 1:
                assert (await waiter.final_event(10))["message"] == "hi"
            elif i % 3 == 0:
                with pytest.raises(TimeoutError):
                    await waiter.next_event(0.01)
            # i % 3 == 2: the reply is left unread

    await asyncio.gather(*(one_request(i) for i in range(60)))
    task = asyncio.ensure_future(one_request(0))
    await asyncio.sleep(0)
    task.cancel()  # a client that goes away
    await asyncio.gather(task, return_exceptions=True)
    inbox = waiters.inbox()
    assert await sync_to_async(subscribed)(pubsub_prefix, 1) == [inbox.channel_name]
    assert inbox.waiters == {} and waiters._in_flight == 0


async def test_past_the_limit_a_request_is_answered_503_and_leaving_gives_one_place_back(in_memory_layer,
                                                                                        settings):
    settings.GATEWAY_MAX_WAITERS_PER_PROCESS = 2
    first, second = ReplyWaiter(uuid.uuid4()), ReplyWaiter(uuid.uuid4())
    await first.__aenter__()
    await second.__aenter__()
    with pytest.raises(ServiceUnavailable) as refused:
        await ReplyWaiter(uuid.uuid4()).__aenter__()
    assert refused.value.headers()["Retry-After"] == str(settings.GATEWAY_OVERLOAD_RETRY_AFTER_SECONDS)
    await first.__aexit__(None, None, None)
    await first.__aexit__(None, None, None)  # leaving twice gives back one place
    async with ReplyWaiter(uuid.uuid4()):
        with pytest.raises(ServiceUnavailable):
            await ReplyWaiter(uuid.uuid4()).__aenter__()
    await second.__aexit__(None, None, None)
    assert waiters._in_flight == 0


class Gate:
    """The layer's ``new_channel`` held at a gate, and failing the first time if asked: the layer
    itself is the real one."""

    def __init__(self, monkeypatch, layer, *, fail_first: bool = False):
        self.reached, self.open = asyncio.Event(), asyncio.Event()
        self.calls = 0
        real = layer.new_channel

        async def held(*args):
            self.calls += 1
            self.reached.set()
            await self.open.wait()
            if fail_first and self.calls == 1:
                raise ConnectionError("Redis went away")
            return await real(*args)

        monkeypatch.setattr(layer, "new_channel", held)


async def test_a_request_that_gives_up_while_the_inbox_opens_leaves_it_opening_for_the_others(
        in_memory_layer, monkeypatch):
    gate = Gate(monkeypatch, in_memory_layer)
    message_id = uuid.uuid4()
    quitter = asyncio.ensure_future(ReplyWaiter(uuid.uuid4()).__aenter__())
    await gate.reached.wait()
    stayer = asyncio.ensure_future(ReplyWaiter(message_id).__aenter__())
    await asyncio.sleep(0)
    quitter.cancel()
    await asyncio.gather(quitter, return_exceptions=True)
    assert waiters._in_flight == 1  # the one that gave up gave its place back
    gate.open.set()
    waiter = await stayer
    await publish(inbound(message_id, waiter), {"type": "agent.reply", "message": "hi"})
    assert (await waiter.final_event(10))["message"] == "hi"
    await waiter.__aexit__(None, None, None)
    assert gate.calls == 1 and waiters._in_flight == 0


async def test_an_inbox_that_failed_to_open_is_opened_by_the_next_request(in_memory_layer, monkeypatch):
    gate = Gate(monkeypatch, in_memory_layer, fail_first=True)
    gate.open.set()
    with pytest.raises(ConnectionError):
        await ReplyWaiter(uuid.uuid4()).__aenter__()
    assert waiters._in_flight == 0
    message_id = uuid.uuid4()
    async with ReplyWaiter(message_id) as waiter:
        await publish(inbound(message_id, waiter), {"type": "agent.reply", "message": "hi"})
        assert (await waiter.final_event(10))["message"] == "hi"
    assert gate.calls == 2


async def test_the_inbox_reads_on_after_the_layer_fails_once(in_memory_layer, monkeypatch, caplog):
    real, failed = in_memory_layer.receive, asyncio.Event()

    async def fails_once(channel):
        if not failed.is_set():
            failed.set()
            raise ConnectionError("Redis went away")
        return await real(channel)

    monkeypatch.setattr(in_memory_layer, "receive", fails_once)
    message_id = uuid.uuid4()
    async with ReplyWaiter(message_id) as waiter:
        await failed.wait()
        await publish(inbound(message_id, waiter), {"type": "agent.reply", "message": "still heard"})
        assert (await waiter.final_event(10))["message"] == "still heard"
    assert "reply inbox: the channel layer failed" in caplog.text


@pytest.mark.services
async def test_an_event_nobody_heard_is_sent_again_once_the_inbox_listens(pubsub_prefix, monkeypatch):
    """As after a Redis restart, before the server's layer has subscribed its inbox again."""
    heard, real_send = [], realtime.send
    monkeypatch.setattr(realtime, "send", lambda channel, event: heard.append(real_send(channel, event)) or heard[-1])
    layer, message_id = get_channel_layer(), uuid.uuid4()
    name = f"{pubsub_prefix}{waiters.INBOX_PREFIX}late"
    sending = asyncio.ensure_future(publish(types.SimpleNamespace(id=message_id, control={INBOX_KEY: name}),
                                            {"type": "agent.reply", "message": "late but heard"}))
    while not heard:
        await asyncio.sleep(0.01)
    assert heard == [0]  # the first PUBLISH found nobody
    event = await asyncio.wait_for(layer.receive(name), 10)  # subscribes, as the layer does again
    await sending
    assert event["message"] == "late but heard" and event["in_reply_to"] == str(message_id)
    assert name not in realtime._unheard


@pytest.mark.services
async def test_an_inbox_nobody_listens_on_is_tried_for_a_while_once(pubsub_prefix, monkeypatch):
    """Its server is gone: the first event is sent again a few times, the next ones once."""
    tries, real_send = [], realtime.send
    monkeypatch.setattr(realtime, "send", lambda channel, event: tries.append(event) or real_send(channel, event))
    message = types.SimpleNamespace(id=uuid.uuid4(), control={INBOX_KEY: f"{pubsub_prefix}{waiters.INBOX_PREFIX}gone"})
    monkeypatch.setattr(realtime, "UNHEARD_PAUSES", (0.01, 0.01))
    await publish(message, {"type": "agent.delta", "delta": "a"})
    assert len(tries) == 3 and message.control[INBOX_KEY] in realtime._unheard
    await publish(message, {"type": "agent.delta", "delta": "b"})
    assert len(tries) == 4
    # Its server's layer comes back (it was away longer than the tries): heard, and so tried
    # again the next time nobody listens.
    listening = asyncio.ensure_future(get_channel_layer().receive(message.control[INBOX_KEY]))
    assert await sync_to_async(subscribed)(pubsub_prefix, 1) == [message.control[INBOX_KEY]]
    await publish(message, {"type": "agent.delta", "delta": "c"})
    assert (await asyncio.wait_for(listening, 10))["delta"] == "c"
    assert message.control[INBOX_KEY] not in realtime._unheard


async def test_the_in_memory_layer_never_holds_events_for_another_process_inbox(in_memory_layer):
    """Its channels live in one process: an inbox named by a process that stopped (the embedded
    default recovering its messages) can never be read, so nothing is kept for it."""
    gone = types.SimpleNamespace(id=uuid.uuid4(), control={INBOX_KEY: "inbox.0123456789ab..inmemory!abcdef"})
    for _ in range(3):
        await publish(gone, {"type": "agent.delta", "delta": "x"})
    assert in_memory_layer.channels == {}


@pytest.mark.services
async def test_an_inbox_heard_after_another_threads_last_try_is_not_marked_unheard(pubsub_prefix, monkeypatch,
                                                                                   settings):
    """One thread's tries end unheard just as its server's layer subscribes again and another
    thread's event is heard: the inbox is listened to, so its next unheard event is tried again."""
    name = f"{pubsub_prefix}{waiters.INBOX_PREFIX}back"
    client = redis.Redis.from_url(settings.REDIS_URL)
    listener = client.pubsub()
    tries, real_send = [], realtime.send

    def send(channel, event):
        listened = real_send(channel, event)
        tries.append(listened)
        if len(tries) == 3:  # this thread's last try found nobody; then the inbox is back
            listener.subscribe(name)
            other = types.SimpleNamespace(id=uuid.uuid4(), control={INBOX_KEY: name})
            to_waiter(other, {"type": "agent.delta", "delta": "heard"})  # another run's event, heard
        return listened

    monkeypatch.setattr(realtime, "send", send)
    monkeypatch.setattr(realtime, "UNHEARD_PAUSES", (0.01, 0.01))
    await publish(types.SimpleNamespace(id=uuid.uuid4(), control={INBOX_KEY: name}), {"type": "agent.delta"})
    assert tries == [0, 0, 0, 1]
    assert name not in realtime._unheard
    listener.close()


def test_the_hearings_kept_are_bounded_without_forgetting_recent_ones(monkeypatch):
    """Forgetting a hearing during another thread's tries would mark a listened inbox unheard."""
    import time

    heard = {f"gone{n}": time.monotonic() - 3600 for n in range(1001)}  # servers heard long ago
    heard["tried"] = time.monotonic()  # heard while another thread tries it
    monkeypatch.setattr(realtime, "_heard_at", heard)
    realtime._heard("another")
    assert set(realtime._heard_at) == {"tried", "another"}

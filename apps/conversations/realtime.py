"""Publishing to whoever waits for a message: web chat sockets, API waiters (the channel layer).

``conversation_group(conversation_id)`` gets every event of a conversation (web chat sockets). An
API request that waits for its reply is answered on its server process's inbox, one channel per
process named in the message's ``control[INBOX_KEY]`` (apps/conversations/waiters.py): ``to_waiter``
sends each event about the message there, marked with the message's id; a message nobody waits
for gets none.

With services the layer is channels_redis's ``RedisPubSubChannelLayer``: each server process holds
one subscription connection for all its listeners, and ``publish`` is one synchronous Redis
``PUBLISH`` (no event loop on the caller's thread or greenlet, so it works under a gevent worker).
See docs/decisions/reply-bus.md.
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import OrderedDict

import redis
from asgiref.sync import async_to_sync
from channels.exceptions import ChannelFull
from channels.layers import get_channel_layer
from django.conf import settings

from gateway_project.redis_pool import waiting_pool

from .waiters import INBOX_PREFIX, INBOX_STEM

logger = logging.getLogger(__name__)

_loop_lock = threading.Lock()
_server_loop: asyncio.AbstractEventLoop | None = None


INBOX_KEY = "inbox"  # in Message.control: the channel of the server process waiting for the reply


def conversation_group(conversation_id) -> str:
    return f"conv.{_hex(conversation_id)}"


def _hex(value) -> str:
    return getattr(value, "hex", None) or str(value).replace("-", "")


def remember_server_loop(loop: asyncio.AbstractEventLoop) -> None:
    """Called by the ASGI app: the in-memory channel layer must only be used on this loop."""
    global _server_loop
    if _server_loop is not loop:
        with _loop_lock:
            _server_loop = loop


def server_loop() -> asyncio.AbstractEventLoop | None:
    loop = _server_loop
    return loop if loop is not None and loop.is_running() and not loop.is_closed() else None


def publish(group: str, event: dict) -> None:
    """Send ``event`` to a channel-layer group from synchronous code (workers, views)."""
    layer = get_channel_layer()
    if layer is None:
        return
    if _is_pubsub(layer):
        _redis_publisher().publish(_pubsub_group_channel(group), layer.serialize(event))
        return
    _on_layer_loop(layer, layer.group_send(group, event))


def _on_layer_loop(layer, coroutine) -> None:
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    loop = server_loop() if _is_in_memory(layer) else None  # the in-memory layer lives on the server's loop
    if loop is not None and running is not loop:
        asyncio.run_coroutine_threadsafe(coroutine, loop).result(10)
        return
    async_to_sync(_awaited)(coroutine)


async def _awaited(coroutine):
    return await coroutine


UNHEARD_PAUSES = (0.1, 0.2, 0.4, 0.8, 1.5)  # seconds between tries while nobody listens on an inbox
_unheard: OrderedDict[str, None] = OrderedDict()  # inboxes found without a listener, latest last
_heard_at: dict[str, float] = {}  # when each inbox last had a listener (monotonic seconds)
HEARD_KEPT_SECONDS = 60.0  # far longer than the tries (UNHEARD_PAUSES), which read it


def to_waiter(inbound, event: dict) -> None:
    """Send ``event`` about the message ``inbound`` to the request waiting for it, if any.

    With Redis, PUBLISH answers how many listened. None listens on an inbox for a moment after
    Redis restarts (the server's layer subscribes again within a second or so), and never once its
    server is gone: an event nobody heard is sent again for a few seconds (``UNHEARD_PAUSES``), the
    first time an inbox is found so; after that, not again for that inbox until it is heard again."""
    inbox = (inbound.control or {}).get(INBOX_KEY)
    if not inbox:
        return
    event = {**event, "in_reply_to": str(inbound.id)}
    if send(inbox, event) != 0:
        _heard(inbox)
        return
    if inbox in _unheard:
        return
    trying_since = time.monotonic()
    for pause in UNHEARD_PAUSES:
        time.sleep(pause)
        if send(inbox, event) != 0:
            _heard(inbox)
            return
    with _loop_lock:
        if _heard_at.get(inbox, 0.0) >= trying_since:
            return  # another thread's event was heard meanwhile: the inbox is listened to
        _unheard[inbox] = None
        if len(_unheard) > 1000:
            _unheard.popitem(last=False)


def _heard(inbox: str) -> None:
    # Under the lock, as the mark is made: a mark never follows a later hearing.
    now = time.monotonic()
    with _loop_lock:
        if len(_heard_at) > 1000:  # one entry per server process seen: forget those not heard lately
            for name in [name for name, at in _heard_at.items() if now - at > HEARD_KEPT_SECONDS]:
                del _heard_at[name]
        _heard_at[inbox] = now
        _unheard.pop(inbox, None)  # heard again (its server's layer was away longer than the tries)


def send(channel: str, event: dict) -> int | None:
    """Send ``event`` to one channel-layer channel from synchronous code (workers, views); with
    Redis, how many listened (0 or 1)."""
    layer = get_channel_layer()
    if layer is None:
        return None
    if _is_pubsub(layer):  # the pub/sub layer's channel is the Redis channel of that name
        return _redis_publisher().publish(channel, layer.serialize(event))
    if channel.startswith(INBOX_STEM) and not channel.startswith(INBOX_PREFIX):
        return None  # another process's inbox: in-memory channels are read in their own process only
    try:
        _on_layer_loop(layer, layer.send(channel, event))
    except ChannelFull:  # a reader that fell that far behind: drop, never fail the run
        logger.warning("a channel of the in-memory layer is full; an event was dropped", extra={"channel": channel})
    return None


_publisher: redis.Redis | None = None


def _redis_publisher() -> redis.Redis:
    """One synchronous client per process over a pool that waits (bounded) for a free connection
    instead of refusing: thread- and greenlet-safe."""
    global _publisher
    if _publisher is None:
        with _loop_lock:
            if _publisher is None:
                host = settings.CHANNEL_LAYERS["default"]["CONFIG"]["hosts"][0]
                _publisher = redis.Redis(connection_pool=waiting_pool(host["address"]))
    return _publisher


def _pubsub_group_channel(group: str) -> str:
    # RedisPubSubChannelLayer publishes a group's events on the Redis channel
    # "<prefix>__group__<group>"; the gevent e2e test fails if that ever changes.
    prefix = settings.CHANNEL_LAYERS["default"]["CONFIG"].get("prefix", "asgi")
    return f"{prefix}__group__{group}"


def _is_pubsub(layer) -> bool:
    return type(layer).__name__ == "RedisPubSubChannelLayer"


def _is_in_memory(layer) -> bool:
    return type(layer).__name__ == "InMemoryChannelLayer"

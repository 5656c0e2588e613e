"""Publishing to whoever waits for a message: web chat sockets, API waiters (the channel layer).

Group names are the contract between publishers (the agent run) and listeners (consumers, API
waiters): ``reply_group(message_id)`` gets every event about one inbound message,
``conversation_group(conversation_id)`` every event of a conversation.
"""
from __future__ import annotations

import asyncio
import threading

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

_loop_lock = threading.Lock()
_server_loop: asyncio.AbstractEventLoop | None = None


def reply_group(message_id) -> str:
    return f"reply.{_hex(message_id)}"


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
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if _is_in_memory(layer):
        loop = server_loop()  # the in-memory layer lives on the server's loop
    else:
        loop = None if running is not None else _publisher_loop()
    if loop is not None and running is not loop:
        asyncio.run_coroutine_threadsafe(layer.group_send(group, event), loop).result(10)
        return
    async_to_sync(layer.group_send)(group, event)


_publisher: asyncio.AbstractEventLoop | None = None


def _publisher_loop() -> asyncio.AbstractEventLoop:
    """One event loop per process, on a daemon thread, for publishing from synchronous code.

    The Redis channel layer keeps its connections per event loop: ``async_to_sync`` would make a
    new loop, and so a new Redis connection, for every reply and every streamed piece. Here every
    publish of the process shares one loop and its connection pool.
    """
    global _publisher
    loop = _publisher
    if loop is not None and not loop.is_closed():
        return loop
    with _loop_lock:
        if _publisher is None or _publisher.is_closed():
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, name="channel-layer-publisher", daemon=True).start()
            _publisher = loop
        return _publisher


def _is_in_memory(layer) -> bool:
    return type(layer).__name__ == "InMemoryChannelLayer"

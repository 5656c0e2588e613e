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
    loop = server_loop()
    if loop is not None and _is_in_memory(layer):
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is not loop:
            asyncio.run_coroutine_threadsafe(layer.group_send(group, event), loop).result(10)
            return
    async_to_sync(layer.group_send)(group, event)


def _is_in_memory(layer) -> bool:
    return type(layer).__name__ == "InMemoryChannelLayer"

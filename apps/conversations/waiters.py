"""Waiting for a reply without polling: subscribe to the message's channel-layer group."""
from __future__ import annotations

import asyncio

from channels.layers import get_channel_layer

from .realtime import reply_group


class ReplyWaiter:
    """``async with ReplyWaiter(message_id) as waiter: event = await waiter.next_event(t)``.

    Subscribe *before* the reply can be published (before the message is enqueued, or check the
    database after subscribing), or the reply may go by unheard.

    ``own_channel=True``: listen on a channel of its own, which the message must then name
    (``REPLY_CHANNEL_KEY`` in its metadata) before it is enqueued; only for a message nobody else
    can wait for (see realtime.py).
    """

    def __init__(self, message_id, *, own_channel: bool = False):
        self.group = None if own_channel else reply_group(message_id)
        self.layer = get_channel_layer()
        self.channel_name: str | None = None

    async def __aenter__(self) -> ReplyWaiter:
        self.channel_name = await self.layer.new_channel()
        if self.group is not None:
            await self.layer.group_add(self.group, self.channel_name)
        return self

    async def __aexit__(self, *exc_info) -> None:
        if self.group is not None:
            await self.layer.group_discard(self.group, self.channel_name)

    async def next_event(self, timeout: float) -> dict:
        """The next event about the message; raises TimeoutError when ``timeout`` runs out."""
        return await asyncio.wait_for(self.layer.receive(self.channel_name), timeout)

    async def final_event(self, timeout: float) -> dict:
        """Skip streamed pieces; the reply or error event. Raises TimeoutError."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            event = await self.next_event(max(0.0, deadline - loop.time()))
            if event["type"] in ("agent.reply", "agent.error"):
                return event

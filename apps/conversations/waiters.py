"""Waiting for a reply without polling: subscribe to the message's channel-layer group."""
from __future__ import annotations

import asyncio

from channels.layers import get_channel_layer
from django.conf import settings

from apps.core.errors import ServiceUnavailable

from .realtime import reply_group

_in_flight = 0  # waiters open in this process (they all run on its one event loop)


class ReplyWaiter:
    """``async with ReplyWaiter(message_id) as waiter: event = await waiter.next_event(t)``.

    Subscribe *before* the reply can be published (before the message is enqueued, or check the
    database after subscribing), or the reply may go by unheard.

    Past ``GATEWAY_MAX_WAITERS_PER_PROCESS`` open waiters, entering raises ServiceUnavailable (503
    with ``Retry-After``) before anything is accepted: overload is answered, not queued unbounded.
    """

    def __init__(self, message_id):
        self.group = reply_group(message_id)
        self.layer = get_channel_layer()
        self.channel_name: str | None = None

    async def __aenter__(self) -> ReplyWaiter:
        global _in_flight
        if _in_flight >= settings.GATEWAY_MAX_WAITERS_PER_PROCESS:
            raise ServiceUnavailable("This server is answering as many requests as it can; retry shortly.",
                                     retry_after=settings.GATEWAY_OVERLOAD_RETRY_AFTER_SECONDS, reason="overload")
        _in_flight += 1
        try:
            self.channel_name = await self.layer.new_channel()
            await self.layer.group_add(self.group, self.channel_name)
        except BaseException:
            _in_flight -= 1
            raise
        return self

    async def __aexit__(self, *exc_info) -> None:
        global _in_flight
        _in_flight -= 1
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

"""Waiting for a reply without polling: one inbox per server process, a queue per waiting request."""
from __future__ import annotations

import asyncio
import logging
import uuid

from channels.layers import get_channel_layer
from django.conf import settings

from apps.core.errors import ServiceUnavailable

logger = logging.getLogger(__name__)

_in_flight = 0  # waiters open in this process (they all run on its one event loop)
# This process's inbox names begin so: an in-memory layer's inbox of another process (one that
# stopped: the embedded default recovering its messages) can never be read (realtime.to_waiter).
INBOX_STEM = "inbox."
INBOX_PREFIX = f"{INBOX_STEM}{uuid.uuid4().hex[:12]}."


class Inbox:
    """This event loop's one channel-layer channel, read by one task that hands each event to the
    waiters of the message it is about (its ``in_reply_to``).

    A waiting request names the inbox in its message (``control[INBOX_KEY]``) and the agent run
    sends the message's events there (``realtime.to_waiter``), so a request costs the channel layer
    nothing: no channel opened, subscribed or dropped per request. The channel is opened by the
    first waiter, before any message names it; with Redis it is one subscription per server process
    for its life (docs/decisions/reply-bus.md).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.layer = get_channel_layer()
        self.channel_name: str | None = None
        self.waiters: dict[str, set[asyncio.Queue]] = {}
        self._opening: asyncio.Task | None = None
        self._reading: asyncio.Task | None = None  # held: the loop keeps only a weak reference to a task

    async def open(self) -> str:
        if self.channel_name is None:
            if self._opening is None or self._opening.done():
                self._opening = asyncio.ensure_future(self.layer.new_channel(INBOX_PREFIX))
            # Shielded: a request that gives up does not cancel the opening the others await; an
            # opening that failed is tried again by the next waiter.
            name = await asyncio.shield(self._opening)
            if self.channel_name is None:
                self.channel_name = name
                self._reading = asyncio.ensure_future(self._read())
        return self.channel_name

    async def _read(self) -> None:
        while True:
            try:
                event = await self.layer.receive(self.channel_name)
            except asyncio.CancelledError:
                raise
            except Exception:  # the layer failed this once (a dropped connection): read on
                logger.warning("reply inbox: the channel layer failed", exc_info=True)
                await asyncio.sleep(1)
                continue
            for queue in self.waiters.get(event.get("in_reply_to"), ()):
                queue.put_nowait(event)  # nobody waits any more: the event is dropped


_inbox: Inbox | None = None


def inbox() -> Inbox:
    """The running event loop's inbox (one per server process; tests run several loops)."""
    global _inbox
    loop = asyncio.get_running_loop()
    if _inbox is None or _inbox.loop is not loop:
        _inbox = Inbox(loop)
    return _inbox


class ReplyWaiter:
    """``async with ReplyWaiter(message_id) as waiter: event = await waiter.next_event(t)``.

    Put ``waiter.inbox_name`` in the message's ``control[INBOX_KEY]`` before it is accepted: the
    events about it then reach this waiter, and none can go by before it listens.

    Past ``GATEWAY_MAX_WAITERS_PER_PROCESS`` open waiters, entering raises ServiceUnavailable (503
    with ``Retry-After``) before anything is accepted: overload is answered, not queued unbounded.
    """

    def __init__(self, message_id):
        self.key = str(message_id)
        self.queue: asyncio.Queue = asyncio.Queue()
        self.inbox: Inbox | None = None
        self.inbox_name: str | None = None

    async def __aenter__(self) -> ReplyWaiter:
        global _in_flight
        if _in_flight >= settings.GATEWAY_MAX_WAITERS_PER_PROCESS:
            raise ServiceUnavailable("This server is answering as many requests as it can; retry shortly.",
                                     retry_after=settings.GATEWAY_OVERLOAD_RETRY_AFTER_SECONDS, reason="overload")
        _in_flight += 1  # given back as the waiter leaves
        try:
            self.inbox = inbox()
            self.inbox_name = await self.inbox.open()
        except BaseException:
            _in_flight -= 1
            raise
        self.inbox.waiters.setdefault(self.key, set()).add(self.queue)
        return self

    async def __aexit__(self, *exc_info) -> None:
        global _in_flight
        if self.inbox_name is None:
            return  # never entered, or already left
        queues = self.inbox.waiters.get(self.key)
        if queues is not None:
            queues.discard(self.queue)
            if not queues:
                del self.inbox.waiters[self.key]
        self.inbox_name = None
        _in_flight -= 1

    async def next_event(self, timeout: float) -> dict:
        """The next event about the message; raises TimeoutError when ``timeout`` runs out."""
        async with asyncio.timeout(timeout):
            return await self.queue.get()

    async def final_event(self, timeout: float) -> dict:
        """Skip streamed pieces; the reply or error event. Raises TimeoutError."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            event = await self.next_event(max(0.0, deadline - loop.time()))
            if event["type"] in ("agent.reply", "agent.error"):
                return event

"""Waiting for a reply without polling: subscribe to the message's channel-layer group."""
from __future__ import annotations

import asyncio
import logging

from channels.layers import get_channel_layer
from django.conf import settings

from apps.core.errors import ServiceUnavailable

from .realtime import reply_group

logger = logging.getLogger(__name__)

_in_flight = 0  # waiters open in this process (they all run on its one event loop)
_background: set[asyncio.Task] = set()  # joins and exits under way, held until they end


def _in_background(coroutine, *, log_failure: bool = True) -> asyncio.Task:
    """Run ``coroutine`` to its end whatever happens to the caller (a client that went away); a
    failure is logged here (``log_failure``) when no caller is left to be told."""
    task = asyncio.ensure_future(coroutine)
    _background.add(task)
    task.add_done_callback(_ended if log_failure else _background.discard)
    return task


def _ended(task: asyncio.Task) -> None:
    _background.discard(task)
    if not task.cancelled() and task.exception() is not None:
        logger.warning("reply waiter: the channel layer failed", exc_info=task.exception())


class ReplyWaiter:
    """``async with ReplyWaiter(message_id) as waiter: event = await waiter.next_event(t)``.

    Subscribe *before* the reply can be published (before the message is enqueued, or check the
    database after subscribing), or the reply may go by unheard.

    Past ``GATEWAY_MAX_WAITERS_PER_PROCESS`` open waiters, entering raises ServiceUnavailable (503
    with ``Retry-After``) before anything is accepted: overload is answered, not queued unbounded.

    Leaving closes the waiter's channel. The channel layer has no call for that: channels_redis's
    pub/sub layer unsubscribes a channel (and drops its queue) only when a receive on it is
    cancelled (django/channels_redis#276), so a waiter that just read its reply and left kept its
    Redis subscription and queue for the life of the process, one per request. One receive runs
    per waiter, not cancelled by a timeout, and leaving cancels it while it waits. Joining and
    leaving run to their end even when the caller is cancelled (the client went away), so a
    waiter cancelled halfway through joining leaves too. A waiter counts against the limit
    until it has left: joins that hang on an unresponsive Redis fill it, and then requests are
    answered 503 instead of piling up joins. (If Redis is unreachable as a waiter
    leaves, the layer keeps the subscriptions it could not drop, and takes them up again when
    Redis is back: docs/decisions/reply-bus.md.)
    """

    def __init__(self, message_id):
        self.group = reply_group(message_id)
        self.layer = get_channel_layer()
        self.channel_name: str | None = None
        self._receiving: asyncio.Task | None = None
        self._leaving: asyncio.Task | None = None

    async def __aenter__(self) -> ReplyWaiter:
        global _in_flight
        if _in_flight >= settings.GATEWAY_MAX_WAITERS_PER_PROCESS:
            raise ServiceUnavailable("This server is answering as many requests as it can; retry shortly.",
                                     retry_after=settings.GATEWAY_OVERLOAD_RETRY_AFTER_SECONDS, reason="overload")
        _in_flight += 1  # given back once the waiter has left (_leave)
        joining = _in_background(self._join(), log_failure=False)  # a failure reaches the caller
        try:
            await asyncio.shield(joining)
        except BaseException:
            self._leaving = _in_background(self._leave_after(joining))
            raise
        return self

    async def __aexit__(self, *exc_info) -> None:
        if self._leaving is None:
            self._leaving = _in_background(self._leave())
        await asyncio.shield(self._leaving)

    async def _join(self) -> None:
        self.channel_name = await self.layer.new_channel()
        await self.layer.group_add(self.group, self.channel_name)

    async def _leave_after(self, joining: asyncio.Task) -> None:
        await asyncio.wait([joining])
        if not joining.cancelled():
            joining.exception()  # the caller was told, or is gone
        await self._leave()

    async def _leave(self) -> None:
        global _in_flight
        try:
            await self._close()
        finally:
            _in_flight -= 1

    async def _close(self) -> None:
        if self.channel_name is None:
            return  # no channel was opened (the layer failed first)
        try:
            await self.layer.group_discard(self.group, self.channel_name)
        except Exception:  # Redis unreachable: close the channel all the same
            logger.warning("a reply waiter could not leave its group", exc_info=True)
        while True:
            if self._receiving is None:
                self._start_receiving()
                await asyncio.sleep(0)  # let it start: it waits on the channel's queue
            if not self._receiving.done():
                self._receiving.cancel()  # the layer closes the channel as the receive ends
                await asyncio.wait([self._receiving])
                return
            if self._receiving.cancelled() or self._receiving.exception() is not None:
                return  # the receive failed (and ended): nothing is waiting on the channel
            self._receiving = None  # an event nobody reads: drop it, read on until the receive waits

    def _start_receiving(self) -> None:
        self._receiving = asyncio.ensure_future(self.layer.receive(self.channel_name))

    async def next_event(self, timeout: float) -> dict:
        """The next event about the message; raises TimeoutError when ``timeout`` runs out."""
        if self._receiving is None:
            self._start_receiving()
        done, _pending = await asyncio.wait([self._receiving], timeout=timeout)
        if not done:
            raise TimeoutError
        receiving, self._receiving = self._receiving, None
        return receiving.result()

    async def final_event(self, timeout: float) -> dict:
        """Skip streamed pieces; the reply or error event. Raises TimeoutError."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            event = await self.next_event(max(0.0, deadline - loop.time()))
            if event["type"] in ("agent.reply", "agent.error"):
                return event

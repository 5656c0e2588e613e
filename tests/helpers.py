"""Helpers shared by test modules (import as ``tests.helpers``)."""
from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TypeVar

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

from apps.conversations import pipeline
from apps.conversations.normalized import NormalizedMessage

T = TypeVar("T")


def wait_until(predicate: Callable[[], T], timeout: float = 10.0, interval: float = 0.05) -> T:
    """Call ``predicate()`` until it returns something truthy or ``timeout`` seconds have passed;
    returns its last value, so ``assert wait_until(...)`` fails with the deadline. For events that
    happen in another thread or process (a frame, a row, a log line, a recorded request)."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()) and time.monotonic() < deadline:
        time.sleep(interval)
    return value


def send(channel, user, text, **fields):
    """Accept ``text`` from ``user`` on ``channel`` through the real pipeline; the inbound Message."""
    msg = NormalizedMessage(channel=channel.kind, channel_id=channel.slug, user_id=str(user.pk), message=text,
                            **fields)
    return pipeline.accept(msg, channel=channel, principal=user).message


class Listener:
    """Subscribes a fresh channel-layer channel to a group and drains what arrived."""

    def __init__(self, group):
        self.layer = get_channel_layer()
        self.name = async_to_sync(self.layer.new_channel)()
        async_to_sync(self.layer.group_add)(group, self.name)

    def drain(self, quiet_seconds: float = 0.5) -> list[dict]:
        """Every event received until none arrives for ``quiet_seconds``."""
        async def take_all():
            events = []
            while True:
                try:
                    events.append(await asyncio.wait_for(self.layer.receive(self.name), quiet_seconds))
                except TimeoutError:
                    return events
        return async_to_sync(take_all)()

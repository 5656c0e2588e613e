"""Helpers shared by test modules (import as ``tests.helpers``)."""
from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.contrib.auth.hashers import PBKDF2PasswordHasher

from apps.conversations import pipeline
from apps.conversations.normalized import NormalizedMessage
from apps.conversations.realtime import INBOX_KEY

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
    """A fresh channel-layer channel, subscribed to ``group`` if one is given; drains what arrived."""

    def __init__(self, group: str | None = None):
        self.layer = get_channel_layer()
        self.name = on_layer_loop(self.layer, self.layer.new_channel())
        if group is not None:
            on_layer_loop(self.layer, self.layer.group_add(group, self.name))

    @classmethod
    def waiting_for(cls, message) -> Listener:
        """Stands in for the server inbox of a request waiting for ``message``: the message names
        this listener's channel, as ``ReplyWaiter`` has a waiting request's message do."""
        listener = cls()
        message.control = {**(message.control or {}), INBOX_KEY: listener.name}
        type(message).objects.filter(pk=message.pk).update(control=message.control)
        return listener

    def drain(self, quiet_seconds: float = 0.5) -> list[dict]:
        """Every event received until none arrives for ``quiet_seconds``."""
        async def take_all():
            events = []
            while True:
                try:
                    events.append(await asyncio.wait_for(self.layer.receive(self.name), quiet_seconds))
                except TimeoutError:
                    return events
        return on_layer_loop(self.layer, take_all())


_listener_loop: asyncio.AbstractEventLoop | None = None


def on_layer_loop(layer, coroutine):
    """Run ``coroutine`` for a test listening from synchronous code.

    The Redis pub/sub layer keeps its subscriptions per event loop and receives on a task of that
    loop, so its listeners share one loop that keeps running (on a thread); the in-memory layer is
    used through ``async_to_sync`` as the code under test publishes to it.
    """
    global _listener_loop
    if type(layer).__name__ != "RedisPubSubChannelLayer":
        async def run():
            return await coroutine
        return async_to_sync(run)()
    if _listener_loop is None:
        _listener_loop = asyncio.new_event_loop()
        threading.Thread(target=_listener_loop.run_forever, name="test-listener-loop", daemon=True).start()
    return asyncio.run_coroutine_threadsafe(coroutine, _listener_loop).result(30)


class FastPBKDF2PasswordHasher(PBKDF2PasswordHasher):
    """Django's PBKDF2 at one iteration: test users are made by the hundred, and each default hash
    costs ~0.3 s of CPU. The iteration count is stored in the hash, so server processes the end-to-end
    tests start verify these passwords with the stock hasher."""

    iterations = 1


def face_answers(base_url: str, key: str) -> tuple[str, list[str]]:
    """Ask the OpenAI face at ``base_url`` twice through the real ``openai`` client, for model
    ``assistant``: "face" non-streamed, then "streamed" in pieces. The first answer, and the
    second's chunks."""
    import openai

    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key=key, max_retries=0, timeout=30)
    completion = client.chat.completions.create(model="assistant", messages=[{"role": "user", "content": "face"}])
    stream = client.chat.completions.create(model="assistant", stream=True,
                                            messages=[{"role": "user", "content": "streamed [[slow:0.01]]"}])
    return completion.choices[0].message.content, [c.choices[0].delta.content or "" for c in stream if c.choices]

"""The staff inbox websocket ``/ws/console/``: a frame ``{"type": "changed", "kind",
"conversation_id"}`` whenever a conversation of a channel the staff member may see changes in the
handoff inbox (requested, new message, taken, replied, handed back). The page then re-reads the
list or the transcript over HTTP, where every permission is checked again.

An open socket checks its staff member again at most every ``RECHECK_SECONDS``, before a frame:
signed out, deactivated, no longer staff or refused the console closes it (4403), and a channel
taken away stops its frames."""
from __future__ import annotations

import time
from importlib import import_module
from types import SimpleNamespace
from urllib.parse import urlparse

from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.conf import settings
from django.contrib import auth

from apps.identities.permissions import usable_channel_ids
from gateway_project.db import database_sync_to_async

from .console import console_allowed
from .services import INBOX_GROUP

CLOSE_POLICY_VIOLATION = 4403
RECHECK_SECONDS = 10.0


def same_origin(scope) -> bool:
    headers = dict(scope.get("headers") or [])
    origin = headers.get(b"origin", b"").decode("latin-1")
    host = headers.get(b"host", b"").decode("latin-1")
    return bool(origin and host) and urlparse(origin).netloc == host


def channels_still_seen(session_key: str | None) -> set[int] | None:
    """The channels the session's staff member may see in the console now; None when the session
    no longer speaks for someone allowed in (signed out, password changed, deactivated, refused)."""
    session = import_module(settings.SESSION_ENGINE).SessionStore(session_key)  # read afresh
    user = auth.get_user(SimpleNamespace(session=session))
    if not console_allowed(user):
        return None
    return usable_channel_ids(user)


class InboxConsumer(AsyncJsonWebsocketConsumer):
    channels_seen: set[int] = frozenset()
    joined = False
    checked_at = 0.0

    async def connect(self):
        if not same_origin(self.scope):  # a session cookie must not open this from another site
            await self.close(code=CLOSE_POLICY_VIOLATION)
            return
        user = self.scope.get("user")
        allowed = user is not None and await database_sync_to_async(console_allowed)(user)
        if not allowed:
            await self.close(code=CLOSE_POLICY_VIOLATION)
            return
        self.channels_seen = await database_sync_to_async(usable_channel_ids)(user)
        self.checked_at = time.monotonic()
        await self.channel_layer.group_add(INBOX_GROUP, self.channel_name)
        self.joined = True
        await self.accept()

    async def disconnect(self, code):
        if self.joined:
            await self.channel_layer.group_discard(INBOX_GROUP, self.channel_name)

    async def receive(self, text_data=None, bytes_data=None, **kwargs):
        pass  # the inbox only listens (actions are HTTP posts): a frame is never parsed

    async def inbox_changed(self, event):
        if time.monotonic() - self.checked_at >= RECHECK_SECONDS:
            session = self.scope.get("session")
            seen = await database_sync_to_async(channels_still_seen)(getattr(session, "session_key", None))
            self.channels_seen, self.checked_at = seen or frozenset(), time.monotonic()
            if seen is None:
                await self.close(code=CLOSE_POLICY_VIOLATION)
                return
        if event.get("channel_id") in self.channels_seen:
            await self.send_json({"type": "changed", "kind": event.get("kind", ""),
                                  "conversation_id": event.get("conversation_id")})

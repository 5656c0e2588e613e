"""The plain API channel: replies wake the HTTP request waiting for them (if any)."""
from __future__ import annotations

from apps.conversations.realtime import publish_reply

from .base import Connector, reply_event


class ApiConnector(Connector):
    kind = "api"

    def wants_stream(self, inbound) -> bool:
        return bool(inbound.metadata.get("stream"))

    def send_delta(self, inbound, piece: str) -> None:
        publish_reply(inbound, {"type": "agent.delta", "delta": piece})

    def send_reset(self, inbound) -> None:
        publish_reply(inbound, {"type": "agent.reset"})

    def send(self, reply, *, inbound) -> None:
        # The reply is already stored; a client that did not wait reads it from the
        # conversation, so the only delivery is waking a waiter.
        publish_reply(inbound, reply_event(reply))

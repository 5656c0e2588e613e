"""The plain API channel: replies wake the HTTP request waiting for them (if any)."""
from __future__ import annotations

from apps.conversations.realtime import to_waiter

from .base import Connector, reply_event


class ApiConnector(Connector):
    kind = "api"

    def wants_stream(self, inbound) -> bool:
        return bool((inbound.control or {}).get("stream"))  # the face's decision, never the client's metadata

    def send_delta(self, inbound, piece: str) -> None:
        to_waiter(inbound, {"type": "agent.delta", "delta": piece})

    def send_reset(self, inbound, *, replaced: bool = False) -> None:
        to_waiter(inbound, {"type": "agent.reset", "replaced": replaced})

    def send(self, reply, *, inbound) -> None:
        # The reply is already stored; a client that did not wait reads it from the
        # conversation, so the only delivery is waking the request waiting for it, if any.
        if not reply.follows_up:  # a request waits for its message's answer, not what follows it
            to_waiter(inbound, reply_event(reply))

"""The web chat channel: replies and streamed pieces go to the conversation's open sockets."""
from __future__ import annotations

from apps.conversations.realtime import conversation_group, publish

from .base import Connector, reply_event


class WebchatConnector(Connector):
    kind = "webchat"

    def wants_stream(self, inbound) -> bool:
        return True

    def send_delta(self, inbound, piece: str) -> None:
        publish(
            conversation_group(inbound.conversation_id),
            {"type": "chat.delta", "reply_to": str(inbound.id), "delta": piece},
        )

    def send_reset(self, inbound, *, replaced: bool = False) -> None:
        publish(conversation_group(inbound.conversation_id), {"type": "chat.reset", "reply_to": str(inbound.id)})

    def send(self, reply, *, inbound) -> None:
        publish(conversation_group(inbound.conversation_id), {**reply_event(reply), "type": "chat.reply"})

    def send_error(self, inbound, error) -> None:
        publish(
            conversation_group(inbound.conversation_id),
            {"type": "chat.error", "reply_to": str(inbound.id), **error.error_body()["error"]},
        )

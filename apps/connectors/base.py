"""The connector contract. A connector turns its channel's wire format into NormalizedMessage
(inbound) and delivers replies back on that channel (outbound).

Subclasses set ``kind`` and override what their channel needs:
- ``send(reply, inbound=...)`` — deliver a reply; return None on success, raise ConnectorError
  (``permanent=True`` when retrying cannot help).
- ``send_error(inbound, error)`` — tell the sender their message could not be answered.
- ``wants_stream(inbound)`` / ``send_delta(inbound, piece)`` — for channels that stream;
  ``send_reset(inbound)`` — discard the pieces streamed so far (that attempt failed; another
  attempt, or an error, follows).
"""
from __future__ import annotations

from apps.conversations.realtime import publish, reply_group


class ConnectorError(Exception):
    def __init__(self, message: str, *, permanent: bool = False, retry_after: float | None = None):
        super().__init__(message)
        self.permanent = permanent
        self.retry_after = retry_after


class Connector:
    kind: str = ""

    def __init__(self, channel):
        self.channel = channel

    def wants_stream(self, inbound) -> bool:
        return False

    def send_delta(self, inbound, piece: str) -> None:
        """A streamed piece of the reply (only called when wants_stream() is true)."""

    def send_reset(self, inbound) -> None:
        """The pieces streamed so far are void (only called after send_delta)."""

    def send(self, reply, *, inbound) -> None:
        raise NotImplementedError

    def send_error(self, inbound, error) -> None:
        """Default: wake whoever waits on the message (API waiters) with the error."""
        publish(reply_group(inbound.id), {"type": "agent.error", **error.error_body()["error"]})


def reply_event(reply) -> dict:
    """The channel-layer event announcing a stored reply (what waiters turn into JSON)."""
    return {
        "type": "agent.reply",
        "reply_to": str(reply.reply_to_id),
        "message_id": str(reply.id),
        "conversation_id": str(reply.conversation_id),
        "message": reply.text,
        "model": reply.model,
        "usage": {
            "prompt_tokens": reply.prompt_tokens or 0,
            "completion_tokens": reply.completion_tokens or 0,
            "total_tokens": reply.total_tokens or 0,
        },
        "latency_ms": reply.latency_ms,
    }

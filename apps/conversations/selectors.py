"""Reads on conversations."""
from __future__ import annotations

from .models import Message, Status

HISTORY_FRAME_MESSAGES = 50


def conversation_history(conversation_id, *, limit: int = HISTORY_FRAME_MESSAGES) -> list[dict]:
    """The last ``limit`` messages of a conversation, oldest first, as web chat frames show them."""
    rows = list(
        Message.objects.filter(conversation_id=conversation_id)
        .exclude(status=Status.FAILED, direction="out")
        .order_by("-created_at")
        .values("id", "direction", "text", "reply_to_id", "status", "created_at")[:limit]
    )
    return [
        {
            "message_id": str(row["id"]),
            "direction": row["direction"],
            "message": row["text"],
            "reply_to": str(row["reply_to_id"]) if row["reply_to_id"] else None,
            "status": row["status"],
            "created_at": row["created_at"].isoformat(),
        }
        for row in reversed(rows)
    ]

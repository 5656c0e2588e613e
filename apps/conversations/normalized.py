"""The one shape every channel's inbound message is turned into."""
from __future__ import annotations

import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class NormalizedMessage:
    """A message from any channel, before the pipeline has looked at it.

    ``principal_id`` and ``conversation_id`` may be known up front (an API key's owner, a web chat
    session) or filled in by the pipeline. ``external_id`` is the channel's own id of the event:
    the dedupe key (None when the channel gives none).
    """

    channel: str  # the channel kind, e.g. "slack"
    channel_id: str  # the configured channel's slug
    user_id: str  # the sender's id on that channel
    message: str
    id: uuid.UUID = field(default_factory=uuid.uuid4)
    principal_id: str | None = None
    conversation_id: str | None = None
    external_id: str | None = None
    attachments: list[Any] = field(default_factory=list)
    timestamp: float = field(default_factory=time.time)
    metadata: dict[str, Any] = field(default_factory=dict)
    raw: Any = None  # the inbound payload as received, kept for debugging (not part of the JSON)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("raw")
        data["id"] = str(self.id)
        return data

"""The one shape every channel's inbound message is turned into.

Two dicts ride along, and they differ in who wrote them:

- ``metadata`` is what the channel said about the message. On a webhook channel that is the
  connector's reading of a payload whose signature it checked (the platform vouches for it: a
  Slack thread, a WeCom user). On the API (``CLIENT_METADATA_KINDS``) it is the client's own
  free-form dict, stored as sent and trusted for nothing.
- ``control`` is what the gateway decided: the conversation thread key, an agent asked for by the
  OpenAI face's ``model``, whether the reply streams, the face's earlier turns. Only entry points
  and the pipeline write it; no request body or frame reaches it.
"""
from __future__ import annotations

import math
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

from apps.core.errors import BadRequest

# Channel kinds whose ``metadata`` a client writes (the messages API and the OpenAI face).
CLIENT_METADATA_KINDS = frozenset({"api"})


# Channel kinds whose dedupe key a client chooses (the API's Idempotency-Key, the web chat's
# client_id): a repeat is a client's request, vetted and counted like one. Elsewhere it is a
# platform's redelivery of an event.
CLIENT_KEYED_KINDS = frozenset({"api", "webchat"})


def metadata_vouched_for(channel_kind: str) -> bool:
    """Whether a message's metadata on this kind of channel comes from a verified platform payload
    (so route conditions may match it and its thread is the platform's), not from a client."""
    return channel_kind not in CLIENT_METADATA_KINDS


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
    control: dict[str, Any] = field(default_factory=dict)  # the gateway's decisions, never a client's
    raw: Any = None  # the inbound payload as received, kept for debugging (not part of the JSON)

    def check_storable(self) -> None:
        """Raise BadRequest (400 ``invalid_request``) when a field holds what PostgreSQL cannot
        store: NUL characters or unpaired surrogates in text (columns and jsonb alike), keys
        included, NaN/Infinity in JSON (jsonb has no such numbers), or a platform id longer than
        its column. Without this the insert
        fails inside the pipeline: a 500, a dead socket. SQLite would store them; the check runs
        everywhere so that both ways of running answer alike."""
        for name in STORED_FIELDS:
            if (where := unstorable(getattr(self, name), name)) is not None:
                raise BadRequest(f"{where[:200]}: text with NUL characters or unpaired surrogates, and NaN or "
                                 "Infinity numbers, cannot be stored.")
        for name, what in (("user_id", "The sender's id"), ("external_id", "The message's id")):
            if len(getattr(self, name) or "") > EXTERNAL_ID_MAX_CHARS:
                raise BadRequest(f"{what} on the channel is limited to {EXTERNAL_ID_MAX_CHARS} characters.")

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("raw")
        data["id"] = str(self.id)
        return data


# Message.external_id and external_user_id, ChannelIdentity.external_id: a platform's ids, stored whole.
EXTERNAL_ID_MAX_CHARS = 255

# The fields ``persist`` writes (``raw`` as the message's raw payload, ``control`` with the face's turns).
STORED_FIELDS = ("message", "user_id", "external_id", "conversation_id", "principal_id", "attachments",
                 "metadata", "control", "raw")


def unstorable(value: Any, path: str) -> str | None:
    """The path of the first text or number in ``value`` (nested dicts and lists) that PostgreSQL
    cannot store, or None. Walked without recursion: depth is the JSON parsers' to limit."""
    pending = [(value, path)]
    while pending:
        item, where = pending.pop()
        if isinstance(item, str):
            if not storable_text(item):
                return where
        elif isinstance(item, float):
            if not math.isfinite(item):
                return where
        elif isinstance(item, dict):
            for key, inner in item.items():
                if isinstance(key, str) and not storable_text(key):
                    return f"{where} (a key)"
                pending.append((inner, f"{where}.{key}"))
        elif isinstance(item, list | tuple):
            pending.extend((inner, f"{where}[{i}]") for i, inner in enumerate(item))
    return None


def storable_text(text: str) -> bool:
    """No NUL and no unpaired surrogate: text a PostgreSQL text column and jsonb both take."""
    if "\x00" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True

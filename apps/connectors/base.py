"""The connector contract. A connector turns its channel's wire format into NormalizedMessage
(inbound) and delivers replies back on that channel (outbound).

Subclasses set ``kind`` and override what their channel needs:
- ``send(reply, inbound=...)`` — deliver a reply; return None on success, raise ConnectorError
  (``apps.core.http``: ``permanent=True`` when retrying cannot help, ``retry_after`` when the
  platform said when). Never retry inside ``send``: ``apps.core.http.send_with_retries`` is the one
  place that retries.
- ``send_error(inbound, error)`` — tell the sender their message could not be answered.
- ``tell_answered(inbound, reply)`` — a reply sent for a later message answers this one too
  (a person's during a handoff); by default its waiting request is told.
- ``wants_stream(inbound)`` / ``send_delta(inbound, piece)`` — for channels that stream;
  ``send_reset(inbound, replaced=...)`` — discard the pieces streamed so far (that attempt failed
  and another attempt, or an error, follows; or the message was answered otherwise).
- Webhook channels: ``verify(request)`` (raise GatewayError unless authentic) and
  ``parse(request)`` (return a WebhookResult); ``handle_webhook`` runs them and the pipeline.
- ``Config``: a dataclass the channel's ``config`` + ``secrets`` are validated into (``conf``).
"""
from __future__ import annotations

import dataclasses
import hmac
import logging
import re
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

from django.conf import settings
from django.http import HttpResponse

from apps.conversations.models import FINISH_REASON_KEY
from apps.conversations.pipeline import accept
from apps.conversations.realtime import to_waiter
from apps.core.errors import BadRequest, ChannelMisconfigured, GatewayError, Unauthenticated
from apps.core.signing import hmac_sha256_hex  # noqa: F401 (the connectors and their tests take it from here)
from apps.quotas.notices import tell_refused

logger = logging.getLogger(__name__)


class ConfigError(ValueError):
    """A channel's config or secrets do not fit its kind (message names the field)."""


@dataclass
class WebhookRequest:
    """What a webhook connector sees of an HTTP request: the raw body, never a parsed one."""

    method: str
    headers: dict[str, str]  # lower-cased names
    query: dict[str, str]
    body: bytes
    client_ip: str | None = None
    url: str = ""  # the absolute URL as called (HubSpot signs it)

    def header(self, name: str) -> str:
        return self.headers.get(name.lower(), "")


@dataclass
class WebhookResult:
    """What a parsed webhook asks for: messages for the pipeline, and the HTTP answer."""

    messages: list = field(default_factory=list)
    response: HttpResponse | None = None


class Connector:
    kind: str = ""
    Config: ClassVar[type | None] = None
    webhook: ClassVar[bool] = False  # served by /api/v1/channels/<slug>/webhook
    content_types: ClassVar[tuple[str, ...]] = ("application/json",)
    # Platforms retry a refused delivery; a refusal by our pipeline (limits, disabled sender)
    # is answered 200 to them and logged, so it is not redelivered again and again.
    ack_refusals: ClassVar[bool] = True

    def __init__(self, channel):
        self.channel = channel
        self._conf = None

    # --- configuration ------------------------------------------------------------------
    @property
    def conf(self):
        """The channel's config and secrets as this kind's Config dataclass."""
        if self._conf is None:
            try:
                self._conf = self.parse_config(self.channel.config or {}, self.channel.secrets)
            except ConfigError as exc:
                logger.error("channel misconfigured", extra={"channel": self.channel.slug, "error": str(exc)})
                raise ChannelMisconfigured() from exc
        return self._conf

    @classmethod
    def parse_config(cls, config: dict, secrets: dict):
        """Validate ``config`` + ``secrets`` into ``cls.Config``; raises ConfigError."""
        if cls.Config is None:
            return None
        values: dict[str, Any] = {}
        merged = {**(config or {}), **(secrets or {})}
        for f in dataclasses.fields(cls.Config):
            required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            if f.name in merged and merged[f.name] not in ("", None):
                values[f.name] = merged[f.name]
            elif required:
                raise ConfigError(f"{f.name}: required for a {cls.kind} channel.")
        try:
            return cls.Config(**values)
        except (TypeError, ValueError) as exc:
            raise ConfigError(str(exc)) from exc

    # --- outbound -----------------------------------------------------------------------
    def wants_stream(self, inbound) -> bool:
        return False

    def send_delta(self, inbound, piece: str) -> None:
        """A streamed piece of the reply (only called when wants_stream() is true)."""

    def send_reset(self, inbound, *, replaced: bool = False) -> None:
        """The pieces streamed so far are void (only called after send_delta): another attempt or
        an error follows, or, ``replaced``, the message was answered otherwise (a person's reply
        during a handoff, told to it as well)."""

    def send(self, reply, *, inbound) -> None:
        raise NotImplementedError

    def send_error(self, inbound, error) -> None:
        """Default: wake whoever waits on the message (API waiters) with the error."""
        to_waiter(inbound, {"type": "agent.error", **error.error_body()["error"]})

    def tell_answered(self, inbound, reply) -> None:
        """``reply``, sent for a later message, answers ``inbound`` too (a person's reply during a
        handoff answers every message held for them). Default: wake whoever waits on it."""
        to_waiter(inbound, reply_event(reply))

    # --- inbound (webhook kinds) --------------------------------------------------------
    def verify(self, request: WebhookRequest) -> None:
        """Raise a GatewayError unless the request really comes from the platform."""
        raise NotImplementedError

    def parse(self, request: WebhookRequest) -> WebhookResult:
        """The normalized messages in a verified request, and what to answer."""
        raise NotImplementedError

    def handle_webhook(self, request: WebhookRequest) -> HttpResponse:
        """verify → parse → pipeline for each message → the platform's answer."""
        self.verify(request)
        result = self.parse(request)
        for msg in result.messages:
            try:
                accept(msg, channel=self.channel, client_ip=request.client_ip)
            except GatewayError as error:
                # A message that cannot be taken as sent (BadRequest) is the sender's to fix: a 400,
                # not acknowledged as if it were a policy refusal.
                if not self.ack_refusals or isinstance(error, BadRequest):
                    raise
                logger.warning("webhook message refused", extra={"code": error.code, "channel": self.channel.slug})
                tell_refused(self, msg, error)  # a polite reply for limit refusals, off the request path
        return result.response or HttpResponse(status=200)


# --- signatures: every connector verifies through these ---------------------------------


def constant_time_equals(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


# Epoch seconds a platform may send: from 1970 to the end of year 9999 (what a datetime can hold).
EPOCH_MAX_SECONDS = 253_402_300_799
_EPOCH_TEXT = re.compile(r"[0-9]{1,20}(\.[0-9]{1,9})?")
_EPOCH_INTEGER_TEXT = re.compile(r"[0-9]{1,20}")


def parse_epoch(value, *, unit: int = 1, integer: bool = False) -> float | None:
    """Epoch seconds from a platform's timestamp, or None when ``value`` is not one.

    ``value`` is a JSON number or its decimal text (ASCII digits, an optional fraction unless
    ``integer``), counted in ``1/unit`` seconds (``unit=1000``: milliseconds). Anything else is
    None: other types, signs, exponents, ``NaN``/``inf``, Unicode digits, underscores, and values
    beyond year 9999 (so ``1e400`` or a 400-digit number never overflows a float). Every connector
    reads timestamps through this, so malformed ones are refused the same way everywhere.
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        if not (_EPOCH_INTEGER_TEXT if integer else _EPOCH_TEXT).fullmatch(value):
            return None
        number: float | int = float(value) if "." in value else int(value)
    elif isinstance(value, int) or (isinstance(value, float) and not integer):
        number = value
    else:
        return None
    if not 0 <= number <= EPOCH_MAX_SECONDS * unit:  # NaN fails this too
        return None
    return float(number) / unit


def check_timestamp(value: str, *, now: float | None = None, unit: int = 1,
                    max_age_seconds: float | None = None) -> float:
    """The request's epoch timestamp (whole ``1/unit`` seconds), refused (401) when malformed or
    outside the replay window (CONNECTOR_SIGNATURE_MAX_AGE_SECONDS unless ``max_age_seconds``)."""
    stamp = parse_epoch(value, unit=unit, integer=True)
    if stamp is None:
        raise Unauthenticated("The request timestamp is missing or malformed.", reason="timestamp_malformed")
    now = time.time() if now is None else now
    max_age = settings.CONNECTOR_SIGNATURE_MAX_AGE_SECONDS if max_age_seconds is None else max_age_seconds
    if abs(now - stamp) > max_age:
        raise Unauthenticated("The request timestamp is too old (or in the future); possible replay.",
                              reason="timestamp_outside_window")
    return stamp


def require_signature(expected: str, given: str) -> None:
    if not given or not constant_time_equals(expected, given):
        raise Unauthenticated("The request signature does not match.", reason="signature_mismatch")


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
        "finish_reason": (reply.control or {}).get(FINISH_REASON_KEY) or "stop",  # "length": cut at max_tokens
        "by_person": not reply.by_agent,  # a staff member's reply during a handoff
    }

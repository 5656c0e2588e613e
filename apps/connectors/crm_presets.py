"""Named CRM presets over the generic CRM webhook (crm.py): HubSpot and Zendesk.

Each preset checks its vendor's own signature exactly as the vendor documents it, then reads the
payload the vendor sends; what is not a message is acknowledged and ignored. Replies go out like
the generic CRM's: a signed JSON callback to ``callback_url`` when one is set, otherwise they are
recorded in the conversation for the CRM (or a person) to read through the API.

HubSpot ("Validating requests", signature v3): ``X-HubSpot-Signature-v3`` = Base64 of
HMAC-SHA256 with the app's client secret over method + URI + raw body + the
``X-HubSpot-Request-Timestamp`` header (epoch milliseconds); requests older than 5 minutes are
refused. The URI is the one HubSpot called (``webhook_url`` when a proxy changes what we see),
with the percent-escapes HubSpot's table lists decoded.

Zendesk ("Verifying webhook authenticity"): ``X-Zendesk-Webhook-Signature`` = Base64 of
HMAC-SHA256 with the webhook's signing secret over ``X-Zendesk-Webhook-Signature-Timestamp``
(ISO 8601) + raw body, the timestamp held to CONNECTOR_SIGNATURE_MAX_AGE_SECONDS.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import re
import time
from dataclasses import dataclass, field
from datetime import datetime

from django.conf import settings
from django.http import JsonResponse

from apps.conversations.normalized import NormalizedMessage
from apps.core.errors import BadRequest, Unauthenticated
from gateway_project.json_limits import loads_bounded

from .base import WebhookRequest, WebhookResult, check_timestamp, parse_epoch, require_signature
from .crm import DEFAULT_FIELD_MAP, REQUIRED_FIELDS, CrmConfig, CrmConnector, json_path

logger = logging.getLogger(__name__)

HUBSPOT_SIGNATURE_HEADER = "X-HubSpot-Signature-v3"
HUBSPOT_TIMESTAMP_HEADER = "X-HubSpot-Request-Timestamp"
HUBSPOT_MAX_AGE_SECONDS = 300  # "Reject the request if the timestamp is older than 5 minutes."
# The escapes HubSpot's v3 instructions decode in the request URI before signing.
HUBSPOT_DECODED_ESCAPES = {"%3A": ":", "%2F": "/", "%3F": "?", "%40": "@", "%21": "!", "%24": "$", "%27": "'",
                           "%28": "(", "%29": ")", "%2A": "*", "%2C": ",", "%3B": ";"}
ZENDESK_SIGNATURE_HEADER = "X-Zendesk-Webhook-Signature"
ZENDESK_TIMESTAMP_HEADER = "X-Zendesk-Webhook-Signature-Timestamp"
ZENDESK_EVENT_PREFIX = "zen:event-type:"
ZENDESK_MESSAGE_ADDED = "zen:event-type:messaging_ticket.message_added"


def hmac_sha256_base64(secret: str, data: bytes) -> str:
    return base64.b64encode(hmac.new(secret.encode(), data, hashlib.sha256).digest()).decode()


def hubspot_v3_signature(client_secret: str, *, method: str, uri: str, body: bytes, timestamp: str) -> str:
    uri = re.sub(r"%(3A|2F|3F|40|21|24|27|28|29|2A|2C|3B)",
                 lambda m: HUBSPOT_DECODED_ESCAPES[m.group(0).upper()], uri, flags=re.IGNORECASE)
    return hmac_sha256_base64(client_secret, method.upper().encode() + uri.encode() + body + timestamp.encode())


def zendesk_signature(secret: str, *, timestamp: str, body: bytes) -> str:
    return hmac_sha256_base64(secret, timestamp.encode() + body)


def _epoch_from_iso8601(value: str) -> str:
    """Zendesk stamps its signature with an ISO 8601 time; check_timestamp takes epoch seconds."""
    try:
        return str(int(datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()))
    except (TypeError, ValueError, OverflowError) as exc:
        raise Unauthenticated("The request timestamp is missing or malformed.", reason="timestamp_malformed") from exc


class CrmPresetConnector(CrmConnector):
    """The generic CRM's field mapping and callbacks; subclasses bring the vendor's signature
    and the vendor's payloads (``messages_in``)."""

    def parse(self, request: WebhookRequest) -> WebhookResult:
        try:
            payload = loads_bounded(request.body)
        except ValueError as exc:
            raise BadRequest("The body is not valid JSON.") from exc
        if not isinstance(payload, (dict, list)):
            raise BadRequest("The body must be a JSON object or array.")
        messages = self.messages_in(payload)
        return WebhookResult(messages=messages, response=JsonResponse(
            {"status": "accepted" if messages else "ignored"}, status=202 if messages else 200))

    def messages_in(self, payload) -> list[NormalizedMessage]:
        raise NotImplementedError

    def mapped_message(self, payload: dict, *, required: bool) -> NormalizedMessage | None:
        """A message from ``field_map`` (as the generic CRM reads one); None, or 400 when
        ``required``, if the mapped fields are not there."""
        paths = {**DEFAULT_FIELD_MAP, **self.conf.field_map}
        values = {name: json_path(payload, path) for name, path in paths.items()}
        missing = [name for name in REQUIRED_FIELDS if not _usable(values.get(name))]
        if missing:
            if required:
                raise BadRequest(f"{missing[0]}: nothing usable at JSON path '{paths[missing[0]]}'.")
            return None
        stamp = values.get("timestamp")
        return self.message(
            user_id=str(values["user_id"]), text=str(values["message"]), external_id=str(values["external_id"]),
            thread_id=str(values.get("thread_id") or "") or None, payload=payload,
            timestamp=parse_epoch(stamp),
        )

    def message(self, *, user_id: str, text: str, external_id: str, payload, thread_id: str | None = None,
                timestamp: float | None = None) -> NormalizedMessage:
        if len(text) > settings.GATEWAY_MAX_MESSAGE_CHARS:
            raise BadRequest(f"message: at most {settings.GATEWAY_MAX_MESSAGE_CHARS} characters.")
        return NormalizedMessage(
            channel=self.kind, channel_id=self.channel.slug, user_id=user_id, message=text,
            external_id=external_id, timestamp=timestamp or time.time(),
            metadata={"thread_id": thread_id or f"user:{user_id}", "crm_external_id": external_id},
            raw=payload,
        )


def _usable(value) -> bool:
    return isinstance(value, (str, int)) and not isinstance(value, bool) and bool(str(value).strip())


# --- HubSpot ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class HubSpotConfig:
    client_secret: str
    callback_url: str = ""
    # The exact URL HubSpot calls, when a proxy in front of the gateway changes scheme or host.
    webhook_url: str = ""
    field_map: dict = field(default_factory=lambda: dict(DEFAULT_FIELD_MAP))

    def __post_init__(self):
        CrmConfig(secret=self.client_secret, callback_url=self.callback_url, field_map=self.field_map)
        if self.webhook_url and not self.webhook_url.startswith(("http://", "https://")):
            raise ValueError("webhook_url: must be an http(s) URL.")

    @property
    def secret(self) -> str:
        """Replies to callback_url are signed (the generic CRM way) with the client secret."""
        return self.client_secret


class HubSpotConnector(CrmPresetConnector):
    """HubSpot: a workflow "Send a webhook" action (request signature on) posts one JSON object,
    mapped with ``field_map``; webhook subscription batches (a JSON array of events) are read
    item by item, and items without the mapped fields (CRM object events carry ids, not text)
    are acknowledged and ignored."""

    kind = "hubspot"
    Config = HubSpotConfig

    def verify(self, request: WebhookRequest) -> None:
        timestamp = request.header(HUBSPOT_TIMESTAMP_HEADER)
        check_timestamp(timestamp, unit=1000, max_age_seconds=HUBSPOT_MAX_AGE_SECONDS)
        expected = hubspot_v3_signature(self.conf.client_secret, method=request.method,
                                        uri=self.conf.webhook_url or request.url, body=request.body,
                                        timestamp=timestamp)
        require_signature(expected, request.header(HUBSPOT_SIGNATURE_HEADER))

    def messages_in(self, payload) -> list[NormalizedMessage]:
        if isinstance(payload, dict):
            return [self.mapped_message(payload, required=True)]
        found = (self.mapped_message(item, required=False) for item in payload if isinstance(item, dict))
        messages = [m for m in found if m is not None]
        if len(messages) < len(payload):
            logger.info("hubspot events without a message ignored",
                        extra={"ignored": len(payload) - len(messages)})
        return messages


# --- Zendesk ---------------------------------------------------------------------------------


class ZendeskConnector(CrmPresetConnector):
    """Zendesk: the ``messaging_ticket.message_added`` event is a message when an end user wrote
    it (agents', triggers' and the gateway's own replies are not answered); other Zendesk events
    are acknowledged and ignored; a trigger or automation webhook (its JSON body written in
    Zendesk) is mapped with ``field_map``. The dedupe key is the event's (or mapped) id."""

    kind = "zendesk"
    Config = CrmConfig

    def verify(self, request: WebhookRequest) -> None:
        timestamp = request.header(ZENDESK_TIMESTAMP_HEADER)
        check_timestamp(_epoch_from_iso8601(timestamp))
        expected = zendesk_signature(self.conf.secret, timestamp=timestamp, body=request.body)
        require_signature(expected, request.header(ZENDESK_SIGNATURE_HEADER))

    def messages_in(self, payload) -> list[NormalizedMessage]:
        if not isinstance(payload, dict):
            raise BadRequest("A Zendesk webhook body is a JSON object.")
        event_type = payload.get("type")
        if not (isinstance(event_type, str) and event_type.startswith(ZENDESK_EVENT_PREFIX)):
            return [self.mapped_message(payload, required=True)]
        if event_type != ZENDESK_MESSAGE_ADDED:
            logger.info("zendesk event ignored", extra={"event_type": event_type})
            return []
        event = payload.get("event") if isinstance(payload.get("event"), dict) else {}
        actor = event.get("actor") if isinstance(event.get("actor"), dict) else {}
        body = json_path(event, "message.body")
        if actor.get("type") != "end_user":
            return []  # agents, triggers, bots: not for the agent to answer
        if not (_usable(payload.get("id")) and _usable(actor.get("id")) and _usable(body)):
            raise BadRequest("A message_added event needs id, event.actor.id and event.message.body.")
        ticket = payload.get("subject") if _usable(payload.get("subject")) else event.get("conversation_id")
        stamp = payload.get("time")
        return [self.message(
            user_id=str(actor["id"]), text=str(body), external_id=str(payload["id"]),
            thread_id=str(ticket) if _usable(ticket) else None, payload=payload,
            timestamp=_iso_to_epoch_or_none(stamp),
        )]


def _iso_to_epoch_or_none(value) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        return parse_epoch(datetime.fromisoformat(re.sub(r"(\.\d{6})\d+", r"\1", value).replace("Z", "+00:00"))
                           .timestamp())
    except (ValueError, OverflowError):
        return None

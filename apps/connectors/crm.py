"""CRM / generic JSON webhook: signed JSON in, signed JSON callbacks out.

In: ``X-Gateway-Timestamp`` (epoch seconds) and ``X-Gateway-Signature: sha256=<hex>``, the
HMAC-SHA256 of ``{timestamp}.{raw body}`` with the channel's shared secret. A per-channel
``field_map`` says which dotted JSON paths hold ``user_id``, ``message``, ``external_id`` and
(optionally) ``timestamp`` and ``thread_id``.
Out: the reply is POSTed as JSON to ``callback_url`` with the same two headers, but the signed string
is ``gateway-callback:{timestamp}.{raw body}``: a callback the gateway sent can never pass as an
inbound webhook, so one captured on its way to the CRM and replayed at the gateway is refused (401,
audited with reason ``callback_replayed``).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.http import JsonResponse

from apps.conversations.normalized import NormalizedMessage
from apps.core.errors import BadRequest, Unauthenticated
from apps.core.http import request_json
from apps.core.signing import SIGNATURE_HEADER, TIMESTAMP_HEADER, timestamped_signature
from gateway_project.json_limits import loads_bounded

from .base import (
    Connector,
    WebhookRequest,
    WebhookResult,
    check_timestamp,
    constant_time_equals,
    parse_epoch,
    require_signature,
)

DEFAULT_FIELD_MAP = {"user_id": "user_id", "message": "message", "external_id": "id", "timestamp": "timestamp"}
REQUIRED_FIELDS = ("user_id", "message", "external_id")


@dataclass(frozen=True)
class CrmConfig:
    secret: str
    callback_url: str = ""
    field_map: dict = field(default_factory=lambda: dict(DEFAULT_FIELD_MAP))

    def __post_init__(self):
        if self.callback_url and not self.callback_url.startswith(("http://", "https://")):
            raise ValueError("callback_url: must be an http(s) URL.")
        if not isinstance(self.field_map, dict) or not all(isinstance(v, str) for v in self.field_map.values()):
            raise ValueError("field_map: an object of field name → dotted JSON path.")
        missing = [name for name in REQUIRED_FIELDS if name not in {**DEFAULT_FIELD_MAP, **self.field_map}]
        if missing:
            raise ValueError(f"field_map: needs {', '.join(missing)}.")


CALLBACK_SIGNING_PREFIX = b"gateway-callback:"


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The signature of an inbound webhook (CRM → gateway)."""
    return timestamped_signature(secret, timestamp, body)


def sign_callback(secret: str, timestamp: str, body: bytes) -> str:
    """The signature of a reply callback (gateway → CRM): a distinct signed string from ``sign``."""
    return timestamped_signature(secret, timestamp, body, prefix=CALLBACK_SIGNING_PREFIX)


def json_path(data: Any, path: str) -> Any:
    """``a.b.0.c`` into nested objects and lists; None when any step is missing."""
    for step in path.split("."):
        if isinstance(data, dict):
            data = data.get(step)
        elif isinstance(data, list) and step.isdigit() and int(step) < len(data):
            data = data[int(step)]
        else:
            return None
    return data


class CrmConnector(Connector):
    kind = "crm"
    Config = CrmConfig
    webhook = True
    content_types = ("application/json",)
    ack_refusals = False  # the caller is the CRM itself: tell it why

    def verify(self, request: WebhookRequest) -> None:
        timestamp = request.header(TIMESTAMP_HEADER)
        check_timestamp(timestamp)
        given = request.header(SIGNATURE_HEADER)
        if given and constant_time_equals(sign_callback(self.conf.secret, timestamp, request.body), given):
            raise Unauthenticated("A reply callback is not an inbound message.", reason="callback_replayed")
        require_signature(sign(self.conf.secret, timestamp, request.body), given)

    def parse(self, request: WebhookRequest) -> WebhookResult:
        try:
            payload = loads_bounded(request.body)
        except ValueError as exc:
            raise BadRequest("The body is not valid JSON.") from exc
        paths = {**DEFAULT_FIELD_MAP, **self.conf.field_map}
        values = {name: json_path(payload, path) for name, path in paths.items()}
        for name in REQUIRED_FIELDS:
            value = values.get(name)
            if not isinstance(value, (str, int)) or isinstance(value, bool) or not str(value).strip():
                raise BadRequest(f"{name}: nothing usable at JSON path '{paths[name]}'.")
        text = str(values["message"])
        if len(text) > settings.GATEWAY_MAX_MESSAGE_CHARS:
            raise BadRequest(f"message: at most {settings.GATEWAY_MAX_MESSAGE_CHARS} characters.")
        stamp = values.get("timestamp")
        user_id = str(values["user_id"])
        msg = NormalizedMessage(
            channel=self.kind, channel_id=self.channel.slug, user_id=user_id, message=text,
            external_id=str(values["external_id"]),
            timestamp=parse_epoch(stamp) or time.time(),
            metadata={"thread_id": str(values.get("thread_id") or f"user:{user_id}"),
                      "crm_external_id": str(values["external_id"])},
            raw=payload,
        )
        return WebhookResult(messages=[msg], response=JsonResponse({"status": "accepted"}, status=202))

    def send(self, reply, *, inbound) -> None:
        if not self.conf.callback_url:
            return  # the CRM reads replies through the API instead
        body = json.dumps({
            "reply_to": inbound.metadata.get("crm_external_id"), "user_id": inbound.external_user_id,
            "conversation_id": str(reply.conversation_id), "message_id": str(reply.id), "message": reply.text,
        }).encode()
        timestamp = str(int(time.time()))
        request_json("POST", self.conf.callback_url, body=body, headers={
            "Content-Type": "application/json", TIMESTAMP_HEADER: timestamp,
            SIGNATURE_HEADER: sign_callback(self.conf.secret, timestamp, body),
        })

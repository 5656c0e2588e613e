"""Playing HubSpot and Zendesk in tests: their signature headers over a raw body."""
from __future__ import annotations

import json
import time
from datetime import UTC, datetime

from apps.connectors.crm_presets import hubspot_v3_signature, zendesk_signature

HUBSPOT_CLIENT_SECRET = "hubspot-client-secret-for-tests"
ZENDESK_SECRET = "zendesk-signing-secret-for-tests"


def hubspot_post(client, channel, payload=None, *, body: bytes | None = None, secret=HUBSPOT_CLIENT_SECRET,
                 timestamp: str | None = None, signature: str | None = None, uri: str | None = None):
    body = json.dumps(payload).encode() if body is None else body
    path = f"/api/v1/channels/{channel.slug}/webhook"
    timestamp = str(int(time.time() * 1000)) if timestamp is None else timestamp
    if signature is None:
        signature = hubspot_v3_signature(secret, method="POST", uri=uri or f"http://testserver{path}", body=body,
                                         timestamp=timestamp)
    return client.post(path, data=body, content_type="application/json",
                       headers={"X-HubSpot-Signature-v3": signature, "X-HubSpot-Request-Timestamp": timestamp})


def zendesk_timestamp(seconds_ago: float = 0) -> str:
    return datetime.fromtimestamp(time.time() - seconds_ago, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def zendesk_post(client, channel, payload=None, *, body: bytes | None = None, secret=ZENDESK_SECRET,
                 timestamp: str | None = None, signature: str | None = None):
    body = json.dumps(payload).encode() if body is None else body
    timestamp = zendesk_timestamp() if timestamp is None else timestamp
    signature = zendesk_signature(secret, timestamp=timestamp, body=body) if signature is None else signature
    return client.post(f"/api/v1/channels/{channel.slug}/webhook", data=body, content_type="application/json",
                       headers={"X-Zendesk-Webhook-Signature": signature,
                                "X-Zendesk-Webhook-Signature-Timestamp": timestamp})

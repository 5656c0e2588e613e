"""HMAC-SHA256 signatures: the connectors' checks and the gateway's own signed requests (CRM
callbacks, budget alerts) compute them here."""
from __future__ import annotations

import hashlib
import hmac

SIGNATURE_HEADER = "X-Gateway-Signature"
TIMESTAMP_HEADER = "X-Gateway-Timestamp"  # epoch seconds


def hmac_sha256_hex(secret: str, data: bytes) -> str:
    return hmac.new(secret.encode(), data, hashlib.sha256).hexdigest()


def timestamped_signature(secret: str, timestamp: str, body: bytes, *, prefix: bytes = b"") -> str:
    """``sha256=<hex>`` of ``prefix + timestamp + "." + body``: the X-Gateway-Signature scheme."""
    return "sha256=" + hmac_sha256_hex(secret, prefix + timestamp.encode() + b"." + body)

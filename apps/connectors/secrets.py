"""Channel secrets at rest: one Fernet-encrypted JSON object per channel, with the gateway's field
key (``apps.core.field_key``: FIELD_ENCRYPTION_KEY, or one derived from SECRET_KEY).
"""
from __future__ import annotations

import json

from cryptography.fernet import InvalidToken
from django.core.exceptions import ImproperlyConfigured

from apps.core.field_key import fernet


def secrets_encrypt(values: dict[str, str]) -> str:
    """The ciphertext stored for ``values`` ("" for no secrets)."""
    if not values:
        return ""
    return fernet().encrypt(json.dumps(values, sort_keys=True).encode()).decode()


def secrets_decrypt(ciphertext: str) -> dict[str, str]:
    """The secrets behind ``ciphertext``; raises ImproperlyConfigured if the key changed."""
    if not ciphertext:
        return {}
    try:
        return json.loads(fernet().decrypt(ciphertext.encode()))
    except InvalidToken as exc:
        raise ImproperlyConfigured(
            "A channel's secrets cannot be decrypted: FIELD_ENCRYPTION_KEY (or SECRET_KEY) changed."
        ) from exc

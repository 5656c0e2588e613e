"""Channel secrets at rest: one Fernet-encrypted JSON object per channel.

The key comes from the ``FIELD_ENCRYPTION_KEY`` setting (a Fernet key); when it is empty, one is
derived from ``SECRET_KEY`` so a development install works without extra configuration.
Rotating SECRET_KEY without setting FIELD_ENCRYPTION_KEY makes stored secrets unreadable.
"""
from __future__ import annotations

import base64
import hashlib
import json
from functools import cache

from cryptography.fernet import Fernet, InvalidToken
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured


@cache
def _fernet(key_setting: str, secret_key: str) -> Fernet:
    if key_setting:
        try:
            return Fernet(key_setting.encode())
        except ValueError as exc:
            raise ImproperlyConfigured(
                "FIELD_ENCRYPTION_KEY must be a Fernet key (32 url-safe base64-encoded bytes)."
            ) from exc
    derived = hashlib.sha256(b"gateway.field-encryption:" + secret_key.encode()).digest()
    return Fernet(base64.urlsafe_b64encode(derived))


def fernet() -> Fernet:
    return _fernet(settings.FIELD_ENCRYPTION_KEY, settings.SECRET_KEY)


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

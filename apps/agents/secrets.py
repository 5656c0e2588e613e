"""Provider API keys at rest: Fernet-encrypted with the ``FIELD_ENCRYPTION_KEY`` setting.

When that setting is empty, a key is derived from ``SECRET_KEY`` (so a development install works
without extra configuration); rotating SECRET_KEY then makes stored keys unreadable.
"""
from __future__ import annotations

import base64
import hashlib
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
    return _fernet(getattr(settings, "FIELD_ENCRYPTION_KEY", ""), settings.SECRET_KEY)


def encrypt_secret(value: str) -> str:
    return fernet().encrypt(value.encode()).decode()


def decrypt_secret(ciphertext: str) -> str:
    """The clear value; raises ImproperlyConfigured if the encryption key changed."""
    try:
        return fernet().decrypt(ciphertext.encode()).decode()
    except InvalidToken as exc:
        raise ImproperlyConfigured(
            "A provider's API key cannot be decrypted: FIELD_ENCRYPTION_KEY (or SECRET_KEY) changed."
        ) from exc

"""The gateway's field key: the Fernet key that encrypts secrets at rest (channel secrets,
provider API keys). Here, in the leaf, because both ``connectors`` and ``agents`` use it.

The key comes from the ``FIELD_ENCRYPTION_KEY`` setting (a Fernet key); when it is empty, one is
derived from ``SECRET_KEY`` so a development install works without extra configuration.
Rotating SECRET_KEY without setting FIELD_ENCRYPTION_KEY makes stored secrets unreadable.
"""
from __future__ import annotations

import base64
import hashlib
from functools import cache

from cryptography.fernet import Fernet
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

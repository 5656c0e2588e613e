"""Provider API keys at rest: Fernet-encrypted with the gateway's field key (FIELD_ENCRYPTION_KEY,
shared with channel secrets; see apps/core/field_key.py)."""
from __future__ import annotations

from cryptography.fernet import InvalidToken
from django.core.exceptions import ImproperlyConfigured

from apps.core.field_key import fernet


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

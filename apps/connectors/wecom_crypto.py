"""WeCom (企业微信) callback crypto, byte-compatible with the official WXBizMsgCrypt SDK.

signature = SHA1 hex of the sorted, concatenated [token, timestamp, nonce, encrypt];
AES-256-CBC with key = base64decode(EncodingAESKey + "="), IV = key[:16], PKCS#7 padding to
32-byte blocks; plaintext = 16 random bytes + 4-byte big-endian length + message + receive id
(the CorpID), and the receive id must match.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import struct

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

BLOCK_BYTES = 32


class WeComCryptoError(ValueError):
    """Bad signature, ciphertext, padding or receive id."""


class WeComCrypto:
    def __init__(self, *, token: str, encoding_aes_key: str, receive_id: str):
        if len(encoding_aes_key) != 43:
            raise ValueError("encoding_aes_key: must be 43 characters.")
        try:
            self.key = base64.b64decode(encoding_aes_key + "=", validate=True)
        except binascii.Error as exc:
            raise ValueError("encoding_aes_key: not base64.") from exc
        self.token, self.receive_id = token, receive_id

    def signature(self, timestamp: str, nonce: str, encrypt: str) -> str:
        return hashlib.sha1("".join(sorted([self.token, timestamp, nonce, encrypt])).encode()).hexdigest()

    def verify(self, msg_signature: str, timestamp: str, nonce: str, encrypt: str) -> None:
        expected = self.signature(timestamp, nonce, encrypt)
        if not msg_signature or not hmac.compare_digest(expected.encode(), msg_signature.encode()):
            raise WeComCryptoError("signature mismatch")

    def _cipher(self) -> Cipher:
        return Cipher(algorithms.AES(self.key), modes.CBC(self.key[:16]))

    def decrypt(self, encrypt: str) -> bytes:
        """The message inside ``encrypt`` (base64 ciphertext); checks padding and receive id."""
        try:
            data = base64.b64decode(encrypt, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise WeComCryptoError("ciphertext is not base64") from exc
        if not data or len(data) % 16:
            raise WeComCryptoError("ciphertext length is not a multiple of the AES block")
        decryptor = self._cipher().decryptor()
        plain = decryptor.update(data) + decryptor.finalize()
        pad = plain[-1]
        if not 1 <= pad <= BLOCK_BYTES or plain[-pad:] != bytes([pad]) * pad:
            raise WeComCryptoError("bad padding")
        plain = plain[:-pad]
        if len(plain) < 20:
            raise WeComCryptoError("plaintext too short")
        (length,) = struct.unpack(">I", plain[16:20])
        message, receive_id = plain[20:20 + length], plain[20 + length:]
        if len(message) != length:
            raise WeComCryptoError("bad length prefix")
        if not hmac.compare_digest(receive_id, self.receive_id.encode()):
            raise WeComCryptoError("receive id (CorpID) mismatch")
        return message

    def encrypt(self, message: bytes, *, random16: bytes | None = None) -> str:
        """Base64 ciphertext of ``message`` (for replies, and for tests that play WeCom)."""
        random16 = os.urandom(16) if random16 is None else random16
        plain = random16 + struct.pack(">I", len(message)) + message + self.receive_id.encode()
        pad = BLOCK_BYTES - len(plain) % BLOCK_BYTES
        plain += bytes([pad]) * pad
        encryptor = self._cipher().encryptor()
        return base64.b64encode(encryptor.update(plain) + encryptor.finalize()).decode()

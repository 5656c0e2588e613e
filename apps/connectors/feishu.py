"""Feishu / Lark (event subscription over HTTP in, reply-to-message API out).

In (open.feishu.cn "接收事件" / "Receive events"):
- With an **Encrypt Key**, the body is ``{"encrypt": base64(iv + AES-256-CBC(event))}``, the AES key
  being SHA-256 of the Encrypt Key and the IV the first 16 bytes; each event push carries
  ``X-Lark-Signature`` = hex SHA-256 of ``X-Lark-Request-Timestamp + X-Lark-Request-Nonce +
  Encrypt Key + raw body``, checked in constant time, with the timestamp inside
  CONNECTOR_SIGNATURE_MAX_AGE_SECONDS. The URL-verification request is not signed: it is accepted
  when it decrypts (only the Encrypt Key's holder can make one) and carries the Verification Token.
- Without an Encrypt Key, the body is plain JSON and the **Verification Token** in it
  (``header.token`` for schema 2.0, ``token`` for the URL verification) is checked in constant time.
- ``url_verification`` is answered ``{"challenge": ...}``; schema 2.0 ``im.message.receive_v1``
  text messages become messages: every p2p message, a group message only when it mentions the bot
  (``bot_open_id``; any mention when it is not configured, since Feishu only pushes group messages
  that mention the bot unless the app holds the "read all group messages" scope). The mention is
  removed from the text; other mentions become ``@name``. Messages from apps are never answered.
- Dedupe on ``message.message_id``, not ``header.event_id``: Feishu redelivers until it gets a
  200, and may push one message again as a new event ("如有幂等需求请使用 message_id 去重，不要
  依赖 event_id"); the thread is the message's ``root_id`` (a reply thread) or else the chat.
Out: ``POST /open-apis/im/v1/messages/{message_id}/reply`` with a tenant access token from
``/open-apis/auth/v3/tenant_access_token/internal``, kept in the Django cache until shortly before it
expires and fetched again when Feishu says it is invalid. The reply's ``uuid`` is our reply id, so a
retried send is delivered once. Feishu and Lark differ only in FEISHU_API_BASE_URL.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import re
import time
from dataclasses import dataclass

from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from django.conf import settings
from django.core.cache import cache
from django.http import JsonResponse

from apps.conversations.normalized import NormalizedMessage
from apps.core.errors import BadRequest, GatewayError, Unauthenticated
from apps.core.http import ConnectorError
from gateway_project.json_limits import loads_bounded

from .base import (
    Connector,
    WebhookRequest,
    WebhookResult,
    check_timestamp,
    constant_time_equals,
    parse_epoch,
)
from .open_api import call_json, retry_after

logger = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Lark-Signature"
TIMESTAMP_HEADER = "X-Lark-Request-Timestamp"
NONCE_HEADER = "X-Lark-Request-Nonce"
MESSAGE_EVENT = "im.message.receive_v1"
TOKEN_INVALID_CODES = {99991661, 99991663, 99991668}  # missing / invalid / expired access token
TRANSIENT_CODES = {99991400, 1000004, 1000005}  # frequency limit, internal errors
TOKEN_EARLY_REFRESH_SECONDS = 300


MENTION_KEY = re.compile(r"@_user_\d{1,4}")  # the placeholder Feishu puts in the text for a mention
MENTION_NAME_CHARS = 64  # a mention's name as shown in the text: bounded, so the text grows by a bounded factor

class FeishuCryptoError(ValueError):
    pass


def decrypt(encrypt_key: str, encrypted: str) -> bytes:
    """The plaintext of an ``encrypt`` field: AES-256-CBC, key SHA-256(Encrypt Key), IV = first 16 bytes."""
    try:
        blob = base64.b64decode(encrypted, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise FeishuCryptoError("not base64") from exc
    if len(blob) < 32 or len(blob) % 16:
        raise FeishuCryptoError("not whole AES blocks after the IV")
    key = hashlib.sha256(encrypt_key.encode()).digest()
    decryptor = Cipher(algorithms.AES(key), modes.CBC(blob[:16])).decryptor()
    padded = decryptor.update(blob[16:]) + decryptor.finalize()
    unpadder = padding.PKCS7(128).unpadder()
    try:
        return unpadder.update(padded) + unpadder.finalize()
    except ValueError as exc:
        raise FeishuCryptoError("bad padding (wrong Encrypt Key?)") from exc


def encrypt(encrypt_key: str, plaintext: bytes, *, iv: bytes) -> str:
    """The inverse of ``decrypt`` (what Feishu sends); used by tests and the local stand-in."""
    key = hashlib.sha256(encrypt_key.encode()).digest()
    padder = padding.PKCS7(128).padder()
    padded = padder.update(plaintext) + padder.finalize()
    encryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    return base64.b64encode(iv + encryptor.update(padded) + encryptor.finalize()).decode()


def signature(timestamp: str, nonce: str, encrypt_key: str, body: bytes) -> str:
    """``X-Lark-Signature``: hex SHA-256 of timestamp + nonce + Encrypt Key (UTF-8) + the raw body."""
    return hashlib.sha256((timestamp + nonce + encrypt_key).encode() + body).hexdigest()


@dataclass(frozen=True)
class FeishuConfig:
    app_id: str
    app_secret: str
    verification_token: str = ""
    encrypt_key: str = ""
    bot_open_id: str = ""  # the bot's open_id (ou_...): group messages must mention it

    def __post_init__(self):
        if not (self.verification_token or self.encrypt_key):
            raise ValueError("verification_token or encrypt_key: set at least one (both is best).")
        if not self.app_id.startswith("cli_"):
            raise ValueError("app_id: a Feishu App ID starts with cli_.")


def _json_object(data: bytes, what: str) -> dict:
    try:
        payload = loads_bounded(data)
    except ValueError as exc:
        raise BadRequest(f"The {what} is not valid JSON.") from exc
    if not isinstance(payload, dict):
        raise BadRequest(f"The {what} must be a JSON object.")
    return payload


def _event_token(payload: dict) -> str:
    header = payload.get("header")
    token = header.get("token") if isinstance(header, dict) else payload.get("token")
    return token if isinstance(token, str) else ""


class FeishuConnector(Connector):
    kind = "feishu"
    Config = FeishuConfig
    webhook = True
    content_types = ("application/json",)

    _event: dict | None = None

    # --- inbound --------------------------------------------------------------------------
    def verify(self, request: WebhookRequest) -> None:
        if request.method != "POST":
            raise BadRequest("Feishu posts its events; nothing to answer to a GET.")
        conf = self.conf
        body = _json_object(request.body, "body")
        signed = bool(request.header(SIGNATURE_HEADER))
        if conf.encrypt_key and signed:
            timestamp = request.header(TIMESTAMP_HEADER)
            check_timestamp(timestamp)
            expected = signature(timestamp, request.header(NONCE_HEADER), conf.encrypt_key, request.body)
            if not constant_time_equals(expected, request.header(SIGNATURE_HEADER)):
                raise Unauthenticated("The request signature does not match.", reason="signature_mismatch")
        if "encrypt" in body:
            if not conf.encrypt_key:
                raise Unauthenticated("An encrypted event, but this channel has no Encrypt Key.",
                                      reason="undecryptable")
            event = self._decrypted(body["encrypt"])
        else:
            event = body
        if conf.encrypt_key and not signed and (event.get("type") != "url_verification" or "encrypt" not in body):
            # Only the URL verification comes unsigned, encrypted with the key; anything else
            # unsigned (a plaintext verification included) is not from Feishu.
            raise Unauthenticated("The request signature is missing.", reason="signature_missing")
        if conf.verification_token and not constant_time_equals(conf.verification_token, _event_token(event)):
            raise Unauthenticated("The Verification Token does not match.", reason="token_mismatch")
        self._event = event

    def _decrypted(self, encrypted) -> dict:
        if not isinstance(encrypted, str):
            raise BadRequest("encrypt: must be a string.")
        try:
            plain = decrypt(self.conf.encrypt_key, encrypted)
        except FeishuCryptoError as exc:
            raise Unauthenticated(f"The event cannot be decrypted ({exc}).", reason="undecryptable") from exc
        return _json_object(plain, "decrypted event")

    def parse(self, request: WebhookRequest) -> WebhookResult:
        event = self._event if self._event is not None else _json_object(request.body, "body")
        if event.get("type") == "url_verification":
            return WebhookResult(response=JsonResponse({"challenge": str(event.get("challenge", ""))}))
        header = event.get("header")
        if event.get("schema") != "2.0" or not isinstance(header, dict):
            logger.info("feishu event ignored (not schema 2.0)")
            return WebhookResult(response=JsonResponse({}))
        if header.get("event_type") != MESSAGE_EVENT:
            logger.info("feishu event ignored", extra={"event_type": str(header.get("event_type"))[:64]})
            return WebhookResult(response=JsonResponse({}))
        msg = self.normalize(event)
        return WebhookResult(messages=[msg] if msg else [], response=JsonResponse({}))

    def normalize(self, event: dict) -> NormalizedMessage | None:
        """The text message in an ``im.message.receive_v1`` event, or None when it is not one to answer."""
        header, body = event["header"], event.get("event")
        if not isinstance(body, dict) or not isinstance(body.get("message"), dict) \
                or not isinstance(body.get("sender"), dict):
            raise BadRequest("im.message.receive_v1: event.sender and event.message are required.")
        sender, message = body["sender"], body["message"]
        if sender.get("sender_type") != "user":
            return None  # apps and bots (ours included): never answered, so replies never loop
        if message.get("message_type") != "text":
            logger.info("feishu message type not handled", extra={"message_type": str(message.get("message_type"))})
            return None
        sender_ids = sender.get("sender_id") if isinstance(sender.get("sender_id"), dict) else {}
        open_id, event_id = sender_ids.get("open_id"), header.get("event_id")
        message_id, chat_id = message.get("message_id"), message.get("chat_id")
        if not all(isinstance(v, str) and v for v in (open_id, event_id, message_id, chat_id)):
            raise BadRequest("im.message.receive_v1: sender open_id, event_id, message_id and chat_id are required.")
        try:
            content = loads_bounded(message.get("content") or "")
            text = content["text"]
        except (ValueError, TypeError, KeyError) as exc:
            raise BadRequest('message.content: must be a JSON string like {"text": "..."}.') from exc
        if not isinstance(text, str):
            raise BadRequest("message.content.text: must be a string.")
        listed = message.get("mentions") if isinstance(message.get("mentions"), list) else []
        # Only placeholders of Feishu's form: an empty or odd key would make each replace below
        # multiply the text.
        mentions = [m for m in listed if isinstance(m, dict) and isinstance(m.get("key"), str)
                    and MENTION_KEY.fullmatch(m["key"])]
        if message.get("chat_type") != "p2p" and not self._mentions_bot(mentions):
            return None
        text = self._without_bot_mention(text, mentions).strip()
        if not text:
            return None
        root_id = message.get("root_id") or ""
        return NormalizedMessage(
            channel=self.kind, channel_id=self.channel.slug, user_id=open_id,
            message=text[: settings.GATEWAY_MAX_MESSAGE_CHARS], external_id=message_id,
            timestamp=_epoch_ms(message.get("create_time")),
            metadata={
                "thread_id": f"{chat_id}:{root_id}" if root_id else chat_id,
                "feishu_message_id": message_id, "feishu_chat_id": chat_id,
                "feishu_chat_type": str(message.get("chat_type", "")), "feishu_event_id": event_id,
                "feishu_tenant_key": str(header.get("tenant_key", "")),
            },
            raw={**event, "header": {k: v for k, v in header.items() if k != "token"}},  # no secret kept
        )

    def _is_bot(self, mention: dict) -> bool:
        ids = mention.get("id") if isinstance(mention.get("id"), dict) else {}
        return bool(self.conf.bot_open_id) and ids.get("open_id") == self.conf.bot_open_id

    def _mentions_bot(self, mentions: list[dict]) -> bool:
        return any(self._is_bot(m) for m in mentions) if self.conf.bot_open_id else bool(mentions)

    def _without_bot_mention(self, text: str, mentions: list[dict]) -> str:
        """The bot's mention placeholder (``@_user_1``) removed, others replaced by ``@name``.
        Without ``bot_open_id`` the mentions the text starts with are taken to be the bot's."""
        leading = set(re.findall(r"@_user_\d+", re.match(r"^(\s*@_user_\d+)*", text).group(0)))
        shown: dict[str, str] = {}  # placeholder → what replaces it (the first mention of a key wins)
        for mention in mentions:
            bot = self._is_bot(mention) if self.conf.bot_open_id else mention["key"] in leading
            name = mention.get("name") if isinstance(mention.get("name"), str) else ""
            shown.setdefault(mention["key"], "" if bot else f"@{name[:MENTION_NAME_CHARS]}")
        if shown:
            # One pass, longest key first (@_user_10 before @_user_1): a name that holds a placeholder
            # is never replaced again, so names cannot multiply the text mention after mention.
            keys = re.compile("|".join(re.escape(key) for key in sorted(shown, key=len, reverse=True)))
            text = keys.sub(lambda found: shown[found.group(0)], text)
        return re.sub(r"[ \t]{2,}", " ", text)

    # --- outbound -------------------------------------------------------------------------
    def _api(self, path: str) -> str:
        return f"{settings.FEISHU_API_BASE_URL.rstrip('/')}/open-apis/{path}"

    def _token_cache_key(self) -> str:
        return f"feishu:tenant_access_token:{self.conf.app_id}"

    def tenant_access_token(self, *, refresh: bool = False) -> str:
        """The app's tenant access token, from the cache unless ``refresh``; raises ConnectorError."""
        key = self._token_cache_key()
        if not refresh and (token := cache.get(key)):
            return token
        status, data, headers = call_json("POST", self._api("auth/v3/tenant_access_token/internal"),
                                          payload={"app_id": self.conf.app_id, "app_secret": self.conf.app_secret})
        data = data if isinstance(data, dict) else {}
        if status != 200 or data.get("code") != 0 or not data.get("tenant_access_token"):
            code = data.get("code")
            transient = status == 429 or status >= 500 or code in TRANSIENT_CODES
            raise ConnectorError(f"tenant_access_token: HTTP {status} code {code}", permanent=not transient,
                                 retry_after=retry_after(headers))
        lifetime = int(data.get("expire") or 7200)
        cache.set(key, data["tenant_access_token"], timeout=max(lifetime - TOKEN_EARLY_REFRESH_SECONDS, 60))
        return data["tenant_access_token"]

    def reply_text(self, *, message_id: str, text: str, dedupe_key: str) -> None:
        """Reply to ``message_id`` in its chat; ``dedupe_key`` (≤ 50 chars) makes retries deliver once."""
        payload = {"msg_type": "text", "content": json.dumps({"text": text}, ensure_ascii=False), "uuid": dedupe_key}
        for refresh in (False, True):
            token = self.tenant_access_token(refresh=refresh)
            status, data, headers = call_json("POST", self._api(f"im/v1/messages/{message_id}/reply"),
                                              payload=payload, headers={"Authorization": f"Bearer {token}"})
            data = data if isinstance(data, dict) else {}
            code = data.get("code")
            if status == 200 and code == 0:
                return
            if code in TOKEN_INVALID_CODES and not refresh:
                cache.delete(self._token_cache_key())
                continue
            transient = status == 429 or status >= 500 or code in TRANSIENT_CODES
            raise ConnectorError(f"im/v1/messages/reply: HTTP {status} code {code} {str(data.get('msg', ''))[:100]}",
                                 permanent=not transient, retry_after=retry_after(headers))

    def send(self, reply, *, inbound) -> None:
        self.reply_text(message_id=inbound.metadata["feishu_message_id"], text=reply.text, dedupe_key=str(reply.id))

    def send_error(self, inbound, error) -> None:
        try:
            self.reply_text(message_id=inbound.metadata["feishu_message_id"], text=error.message,
                            dedupe_key=f"error-{inbound.id}"[:50])
        except (ConnectorError, GatewayError) as exc:
            # The failure itself is already recorded on the message; telling the sender is best effort.
            logger.warning("could not tell the sender about the failure", extra={"error": str(exc)})


def _epoch_ms(value) -> float:
    if value in (None, ""):
        return time.time()
    if (stamp := parse_epoch(value, unit=1000)) is None:
        raise BadRequest("message.create_time: must be epoch milliseconds.")
    return stamp

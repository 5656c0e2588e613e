"""Playing Feishu and DingTalk in tests: their documented payloads, encrypted and signed as they do."""
from __future__ import annotations

import copy
import json
import os
import time
import uuid

from apps.connectors.feishu import encrypt as feishu_encrypt
from apps.connectors.feishu import signature as feishu_signature
from tests.connectors.connector_helpers import fixture_json

# The documented event's ids (tests/connectors/fixtures/feishu/im_message_receive_v1.json): its
# header token is the channel's Verification Token, its mention (Tom) stands for our bot.
FEISHU = {
    "app_id": "cli_9f5343c580712544", "app_secret": "feishu-app-secret-for-tests",
    "verification_token": "rvaYgkND1GOiu5MM0E1rncYC6PLtF7JV", "encrypt_key": "feishu-encrypt-key-for-tests",
    "bot_open_id": "ou_84aad35d084aa403a838cf73ee18467",
}
FEISHU_SENDER = "ou_7d8a6e6df7621556ce0d21922b676706"


def feishu_config(**overrides) -> tuple[dict, dict]:
    """(config, secrets) of a Feishu channel like FEISHU, with ``overrides`` ("" drops one)."""
    values = {**FEISHU, **overrides}
    config = {k: values[k] for k in ("app_id", "bot_open_id") if values[k]}
    secrets = {k: values[k] for k in ("app_secret", "verification_token", "encrypt_key") if values[k]}
    return config, secrets


def feishu_event(*, text: str | None = None, chat_type: str | None = None, sender: str = FEISHU_SENDER,
                 mentions: list | None = None, root_id: str | None = None, **message_fields) -> dict:
    """The documented ``im.message.receive_v1`` event as a new message (fresh event and message ids)."""
    event = copy.deepcopy(fixture_json("feishu/im_message_receive_v1.json"))
    event["header"]["event_id"] = uuid.uuid4().hex
    event["event"]["sender"]["sender_id"] = {"open_id": sender}
    message = event["event"]["message"]
    message["message_id"] = f"om_{uuid.uuid4().hex}"
    message["create_time"] = str(int(time.time() * 1000))
    if text is not None:
        message["content"] = json.dumps({"text": text}, ensure_ascii=False)
    if chat_type is not None:
        message["chat_type"] = chat_type
    if mentions is not None:
        message["mentions"] = mentions
    if root_id is not None:
        message["root_id"] = root_id
    message.update(message_fields)
    return event


def feishu_body(event: dict, *, encrypt_key: str | None = FEISHU["encrypt_key"]) -> bytes:
    """The body Feishu posts: ``{"encrypt": ...}`` with an Encrypt Key, else the plain event."""
    plain = json.dumps(event, ensure_ascii=False).encode()
    if not encrypt_key:
        return plain
    return json.dumps({"encrypt": feishu_encrypt(encrypt_key, plain, iv=os.urandom(16))}).encode()


def feishu_headers(body: bytes, *, encrypt_key: str = FEISHU["encrypt_key"], timestamp=None,
                   nonce: str = "1365316849", signature: str | None = None) -> dict[str, str]:
    timestamp = str(int(time.time())) if timestamp is None else str(timestamp)
    return {"X-Lark-Request-Timestamp": timestamp, "X-Lark-Request-Nonce": nonce,
            "X-Lark-Signature": signature if signature is not None
            else feishu_signature(timestamp, nonce, encrypt_key, body)}


def feishu_post(client, channel, event: dict | None = None, *, body: bytes | None = None,
                encrypt_key: str | None = FEISHU["encrypt_key"], signed: bool = True,
                content_type: str = "application/json", **header_options):
    """POST a Feishu push: encrypted and signed like Feishu (unless told otherwise)."""
    body = feishu_body(event, encrypt_key=encrypt_key) if body is None else body
    headers = feishu_headers(body, encrypt_key=encrypt_key or "", **header_options) if signed else {}
    return client.post(f"/api/v1/channels/{channel.slug}/webhook", data=body, content_type=content_type,
                       headers=headers)


# --- DingTalk ------------------------------------------------------------------------------

DINGTALK = {"app_key": "dingtestgatewayapp0", "app_secret": "dingtalk-app-secret-for-tests",
            "robot_code": "dingtestgatewayapp0"}


def dingtalk_config(**overrides) -> tuple[dict, dict]:
    values = {**DINGTALK, **overrides}
    return {k: values[k] for k in ("app_key", "robot_code") if values[k]}, {"app_secret": values["app_secret"]}


def dingtalk_message(*, session_base: str, text: str | None = None, conversation_type: str | None = None,
                     session_valid_seconds: float = 5400, **fields) -> dict:
    """The documented callback body as a new message: fresh msgId, a session webhook on the stand-in."""
    body = copy.deepcopy(fixture_json("dingtalk/callback_text_group.json")["body"])
    now_ms = int(time.time() * 1000)
    body.update(msgId=f"msg{uuid.uuid4().hex}", createAt=now_ms,
                sessionWebhook=f"{session_base}/robot/sendBySession?session={uuid.uuid4().hex}",
                sessionWebhookExpiredTime=now_ms + int(session_valid_seconds * 1000))
    if text is not None:
        body["text"] = {"content": text}
    if conversation_type is not None:
        body["conversationType"] = conversation_type
    body.update(fields)
    return body


def dingtalk_post(client, channel, payload: dict | None = None, *, body: bytes | None = None,
                  secret: str = DINGTALK["app_secret"], timestamp=None, sign: str | None = None,
                  content_type: str = "application/json"):
    from apps.connectors.dingtalk import sign as dingtalk_sign

    body = json.dumps(payload, ensure_ascii=False).encode() if body is None else body
    timestamp = str(int(time.time() * 1000)) if timestamp is None else str(timestamp)
    headers = {"timestamp": timestamp, "sign": dingtalk_sign(timestamp, secret) if sign is None else sign}
    return client.post(f"/api/v1/channels/{channel.slug}/webhook", data=body, content_type=content_type,
                       headers=headers)

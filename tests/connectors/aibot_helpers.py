"""Playing WeCom's AI bot in tests: callbacks encrypted with an empty receive id, signed, and
its passive replies decrypted."""
from __future__ import annotations

import copy
import json
import time
import uuid

from apps.connectors.wecom_crypto import WeComCrypto
from tests.connectors.connector_helpers import fixture_json

AIBOT = {"token": "aibot-token-for-tests", "encoding_aes_key": "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG",
         "bot_id": "aib-test-bot"}


def aibot_crypto(**overrides) -> WeComCrypto:
    return WeComCrypto(token=overrides.get("token", AIBOT["token"]),
                       encoding_aes_key=overrides.get("encoding_aes_key", AIBOT["encoding_aes_key"]),
                       receive_id=overrides.get("receive_id", ""))


def text_callback(text="hello robot", *, msgid=None, user="zhangsan", chattype="single", chatid="",
                  response_url="http://127.0.0.1:9/unused", bot_id=AIBOT["bot_id"]) -> dict:
    """The documented text callback, with this test's values."""
    data = copy.deepcopy(fixture_json("wecom_aibot/text_message.json"))
    data.update(msgid=msgid or uuid.uuid4().hex, aibotid=bot_id, chatid=chatid, chattype=chattype,
                response_url=response_url)
    data["from"]["userid"] = user
    data["text"]["content"] = text
    return data


def refresh_callback(stream_id: str, *, bot_id=AIBOT["bot_id"]) -> dict:
    data = copy.deepcopy(fixture_json("wecom_aibot/stream_refresh.json"))
    data.update(msgid=uuid.uuid4().hex, aibotid=bot_id)
    data["stream"]["id"] = stream_id
    return data


def signed_callback(plaintext: dict | bytes | None, *, crypto=None, timestamp=None, nonce="1372623149",
                    signature=None, encrypt=None) -> tuple[str, bytes]:
    """(query string, JSON body) of an AI bot callback: encrypted, then signed."""
    crypto = crypto or aibot_crypto()
    timestamp = str(int(time.time())) if timestamp is None else str(timestamp)
    if encrypt is None:
        raw = plaintext if isinstance(plaintext, bytes) else json.dumps(plaintext, ensure_ascii=False).encode()
        encrypt = crypto.encrypt(raw)
    signature = signature or crypto.signature(timestamp, nonce, encrypt)
    return (f"msg_signature={signature}&timestamp={timestamp}&nonce={nonce}",
            json.dumps({"encrypt": encrypt}).encode())


def aibot_post(client, channel, plaintext=None, *, body: bytes | None = None, content_type="application/json",
               **callback):
    query, signed_body = signed_callback(plaintext, **callback)
    return client.post(f"/api/v1/channels/{channel.slug}/webhook?{query}", data=signed_body if body is None else body,
                       content_type=content_type)


def open_reply(content: bytes, *, crypto=None) -> dict:
    """The stream message inside a passive reply, after checking its signature."""
    crypto = crypto or aibot_crypto()
    reply = json.loads(content)
    crypto.verify(reply["msgsignature"], str(reply["timestamp"]), reply["nonce"], reply["encrypt"])
    return json.loads(crypto.decrypt(reply["encrypt"]))

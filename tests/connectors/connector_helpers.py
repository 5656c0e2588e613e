"""Playing the platforms in tests: recorded payloads, signing and encrypting like Slack, WeCom and a CRM."""
from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

from apps.connectors.crm import sign as crm_sign
from apps.connectors.wecom_crypto import WeComCrypto
from apps.conversations.models import Message

FIXTURES = Path(__file__).parent / "fixtures"
SLACK_SECRET = "slack-signing-secret-for-tests"
SLACK_BOT_USER = "U0LAN0Z89"
WECOM = {"corp_id": "ww0123456789abcdef", "agent_id": "1000002", "token": "QDG6eK",
         "encoding_aes_key": "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C", "secret": "wecom-app-secret"}
CRM_SECRET = "crm-shared-secret-for-tests"


def fixture_json(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text())


# --- playing the platforms -------------------------------------------------------------


def slack_event(name: str, **event_fields) -> dict:
    """A recorded Slack payload with a fresh message ts (each test speaks for a new message)."""
    payload = fixture_json(f"slack/{name}")
    if "event" in payload:
        payload["event"].update({"ts": f"{time.time():.6f}", **event_fields})
        payload["event_id"] = f"Ev{uuid.uuid4().hex[:10].upper()}"
    return payload


def slack_post(client, channel, payload, *, secret=SLACK_SECRET, timestamp=None, signature=None,
               body: bytes | None = None, content_type="application/json", **headers):
    from apps.connectors.base import hmac_sha256_hex

    body = json.dumps(payload).encode() if body is None else body
    timestamp = str(int(time.time())) if timestamp is None else str(timestamp)
    if signature is None:
        signature = "v0=" + hmac_sha256_hex(secret, b"v0:" + timestamp.encode() + b":" + body)
    return client.post(f"/api/v1/channels/{channel.slug}/webhook", data=body, content_type=content_type,
                       headers={"X-Slack-Request-Timestamp": timestamp, "X-Slack-Signature": signature, **headers})


def wecom_crypto(**overrides) -> WeComCrypto:
    return WeComCrypto(token=overrides.get("token", WECOM["token"]),
                       encoding_aes_key=overrides.get("encoding_aes_key", WECOM["encoding_aes_key"]),
                       receive_id=overrides.get("corp_id", WECOM["corp_id"]))


def wecom_text_xml(*, user="zhangsan", text="你好", msg_id=None, msg_type="text", extra="",
                   corp_id=None, agent_id=None) -> bytes:
    msg_id = msg_id or str(uuid.uuid4().int % 10**19)
    corp_id, agent_id = corp_id or WECOM["corp_id"], agent_id or WECOM["agent_id"]
    return (f"<xml><ToUserName><![CDATA[{corp_id}]]></ToUserName>"
            f"<FromUserName><![CDATA[{user}]]></FromUserName><CreateTime>{int(time.time())}</CreateTime>"
            f"<MsgType><![CDATA[{msg_type}]]></MsgType><Content><![CDATA[{text}]]></Content>"
            f"<MsgId>{msg_id}</MsgId><AgentID>{agent_id}</AgentID>{extra}</xml>").encode()


def wecom_callback(plaintext: bytes | None = None, *, crypto=None, timestamp=None, nonce="1372623149",
                   signature=None, encrypt=None, body=None) -> tuple[str, str]:
    """(query string, XML body) of a callback as WeCom sends it: encrypted, then signed."""
    crypto = crypto or wecom_crypto()
    timestamp = str(int(time.time())) if timestamp is None else str(timestamp)
    encrypt = encrypt if encrypt is not None else crypto.encrypt(plaintext)
    signature = signature or crypto.signature(timestamp, nonce, encrypt)
    if body is None:
        body = (f"<xml><ToUserName><![CDATA[{crypto.receive_id}]]></ToUserName>"
                f"<Encrypt><![CDATA[{encrypt}]]></Encrypt><AgentID><![CDATA[{WECOM['agent_id']}]]></AgentID></xml>")
    return f"msg_signature={signature}&timestamp={timestamp}&nonce={nonce}", body


def wecom_post(client, channel, plaintext: bytes | None = None, *, content_type="text/xml", **callback):
    query, body = wecom_callback(plaintext, **callback)
    return client.post(f"/api/v1/channels/{channel.slug}/webhook?{query}", data=body, content_type=content_type)


def crm_headers(body: bytes, *, secret=CRM_SECRET, timestamp=None, signature=None) -> dict[str, str]:
    """The signature headers a CRM sends with ``body``."""
    timestamp = str(int(time.time())) if timestamp is None else str(timestamp)
    return {"X-Gateway-Timestamp": timestamp, "X-Gateway-Signature": signature or crm_sign(secret, timestamp, body)}


def crm_post(client, channel, payload, *, secret=CRM_SECRET, timestamp=None, signature=None, body=None,
             content_type="application/json"):
    body = json.dumps(payload).encode() if body is None else body
    return client.post(f"/api/v1/channels/{channel.slug}/webhook", data=body, content_type=content_type,
                       headers=crm_headers(body, secret=secret, timestamp=timestamp, signature=signature))


def assert_refusal_logged_and_audited(response, channel, *, code: str = "unauthenticated", reason: str | None = None,
                                      audited: bool = True):
    """The refused request is a RequestLog row naming the channel, and a ``request.refused`` audit
    event (with the refusal's ``reason`` when it has one); none when ``audited`` is False (the same
    refusal again within the minute)."""
    from apps.logs.models import AuditEvent, RequestLog
    from apps.logs.request_log import request_log_flush

    request_log_flush()
    row = RequestLog.objects.get(request_id=response["X-Request-ID"])
    assert (row.status_code, row.rejection, row.channel, row.client_ip) == (
        response.status_code, code, channel, "127.0.0.1")
    if not audited:
        assert not AuditEvent.objects.filter(action="request.refused", detail__request_id=row.request_id).exists()
        return
    event = AuditEvent.objects.get(action="request.refused", detail__request_id=row.request_id)
    assert event.target_id == str(row.pk) and event.client_ip == "127.0.0.1"
    assert event.detail == {"code": code, "status": response.status_code, "channel": channel.kind,
                            "request_id": row.request_id,
                            **({"reason": reason} if reason else {})}  # no body, no signature


def assert_refused(response, status: int, *, code: str | None = None):
    """A clear 4xx in the gateway's error shape, and no message stored (so no agent run)."""
    assert response.status_code == status, response.content
    error = response.json()["error"]
    assert error["message"]
    if code:
        assert error["code"] == code
    assert not Message.objects.exists()

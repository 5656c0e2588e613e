"""Webhooks attacked with messages that carry valid cryptography but are not for us (issue 15, item 9).

- CRM: a reply callback the gateway signed, captured on its way to the CRM and replayed at the
  gateway's inbound webhook, is refused (401) and audited (reason ``callback_replayed``).
- WeCom: a message correctly encrypted and signed with the channel's Token and EncodingAESKey, but
  addressed to another app (AgentID) or corp (ToUserName), is refused (403), audited (reason
  ``wrong_recipient``; the same refusal again within a minute is in the request log only) and
  stored nowhere.
"""
from __future__ import annotations

import json
import secrets
import time
import urllib.error
import urllib.request

from apps.connectors.crm import sign as crm_sign
from apps.connectors.wecom_crypto import WeComCrypto
from tests.security.conftest import last_audit_id, sql

DEADLINE_SECONDS = 30


def post(url: str, body: bytes, headers: dict[str, str], content_type: str = "application/json") -> int:
    request = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": content_type, **headers})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def wait_for(predicate, what: str):
    deadline = time.monotonic() + DEADLINE_SECONDS
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.05)
    raise AssertionError(f"waited {DEADLINE_SECONDS} s for {what}")


def refusals_audited(sec, reason: str, since_id: int) -> int:
    """``request.refused`` audit rows with this reason written after ``since_id``.

    The request log writes them when it is flushed: beat's job in production; this stack runs no
    beat, so the job is run here, as beat would run it.
    """
    sec.stack.manage("shell", "-c", "from apps.logs.request_log import request_log_flush; request_log_flush()")
    return sql(sec, "SELECT count(*) FROM logs_auditevent WHERE action = 'request.refused' "
                    "AND detail->>'reason' = %s AND id > %s", reason, since_id)[0][0]


def at_least(count: int, wanted: int) -> int:
    """``count`` once it reaches ``wanted`` (then the caller checks it is exactly that), else 0."""
    return count if count >= wanted else 0


def inbound_count(sec, external_id: str) -> int:
    return sql(sec, "SELECT count(*) FROM conversations_message WHERE direction = 'in' AND external_id = %s",
               external_id)[0][0]


# --- CRM ---------------------------------------------------------------------------------------


def test_crm_callback_replayed_at_the_webhook(sec, attack):
    crm = sec.demo["channels"]["crm"]
    # Callbacks to our fake CRM. Saved through the ORM, so that processes which already hold the
    # channel (a worker that answered an earlier CRM message) drop their copy (config_cache).
    sec.stack.manage("shell", "-c", "from apps.connectors.models import Channel\n"
                     "channel = Channel.objects.get(slug='crm')\n"
                     f"channel.config = {{**channel.config, 'callback_url': {sec.platforms.crm_callback_url!r}}}\n"
                     "channel.save()\n")
    event_id = f"evt-{secrets.token_hex(4)}"
    body = json.dumps({"id": event_id, "user_id": "c-replay", "message": "Where is my order?"}).encode()
    stamp = str(int(time.time()))
    url = f"{sec.url}/api/v1/channels/crm/webhook"
    assert post(url, body, {"X-Gateway-Timestamp": stamp,
                            "X-Gateway-Signature": crm_sign(crm["secret"], stamp, body)}) == 202  # the control

    # What an eavesdropper on the way to the CRM sees: the callback, body and headers as sent.
    captured = wait_for(lambda: [c for c in sec.platforms.state.crm_callbacks
                                 if json.loads(c["body"]).get("reply_to") == event_id], "the CRM callback")[0]
    headers = {k.lower(): v for k, v in captured["headers"].items()}
    since = last_audit_id(sec)
    before = sql(sec, "SELECT count(*) FROM conversations_message WHERE direction = 'in'")[0][0]
    replays = [captured["body"].encode()]
    for replay in replays:
        status = post(url, replay, {"X-Gateway-Timestamp": headers["x-gateway-timestamp"],
                                    "X-Gateway-Signature": headers["x-gateway-signature"]})
        attack.tried(admitted=status != 401)  # anything else means the signature was accepted
        assert status == 401
    audited_rows = wait_for(lambda: at_least(refusals_audited(sec, "callback_replayed", since), len(replays)),
                            "the audit row")
    attack.audited += audited_rows
    assert audited_rows == len(replays)
    assert sql(sec, "SELECT count(*) FROM conversations_message WHERE direction = 'in'")[0][0] == before


# --- WeCom -------------------------------------------------------------------------------------


def wecom_plaintext(*, corp_id: str, agent_id: str, msg_id: str, text: str = "你好") -> bytes:
    return (f"<xml><ToUserName><![CDATA[{corp_id}]]></ToUserName><FromUserName><![CDATA[zhangsan]]></FromUserName>"
            f"<CreateTime>{int(time.time())}</CreateTime><MsgType><![CDATA[text]]></MsgType>"
            f"<Content><![CDATA[{text}]]></Content><MsgId>{msg_id}</MsgId><AgentID>{agent_id}</AgentID></xml>").encode()


def post_wecom(sec, crypto: WeComCrypto, plaintext: bytes, *, outer_agent_id: str) -> int:
    """As WeCom delivers a callback: encrypted for the corp, signed with the Token."""
    timestamp, nonce = str(int(time.time())), secrets.token_hex(4)
    encrypt = crypto.encrypt(plaintext)
    body = (f"<xml><ToUserName><![CDATA[{crypto.receive_id}]]></ToUserName><Encrypt><![CDATA[{encrypt}]]></Encrypt>"
            f"<AgentID><![CDATA[{outer_agent_id}]]></AgentID></xml>").encode()
    query = f"msg_signature={crypto.signature(timestamp, nonce, encrypt)}&timestamp={timestamp}&nonce={nonce}"
    return post(f"{sec.url}/api/v1/channels/wecom/webhook?{query}", body, {}, content_type="text/xml")


def test_wecom_message_for_another_agent_or_corp(sec, attack):
    w = sec.demo["channels"]["wecom"]
    crypto = WeComCrypto(token=w["token"], encoding_aes_key=w["encoding_aes_key"], receive_id=w["corp_id"])
    other_agent = str(int(w["agent_id"]) + 1)
    since = last_audit_id(sec)
    logged_since = sql(sec, "SELECT coalesce(max(id), 0) FROM logs_requestlog")[0][0]
    attempts = [
        (w["corp_id"], other_agent, other_agent),  # another app of the same corp sharing Token/AESKey
        (w["corp_id"], other_agent, w["agent_id"]),  # the unsigned outer AgentID claims ours
        ("wwanothercorp000", w["agent_id"], w["agent_id"]),  # another corp named inside the envelope
    ]
    for corp_id, agent_id, outer_agent_id in attempts:
        msg_id = str(secrets.randbelow(10**18))
        status = post_wecom(sec, crypto, wecom_plaintext(corp_id=corp_id, agent_id=agent_id, msg_id=msg_id),
                            outer_agent_id=outer_agent_id)
        stored = inbound_count(sec, msg_id)
        attack.tried(admitted=status < 400 or stored)
        assert (status, stored) == (403, 0)
    # One refusal (same reason, channel and address) three times within the minute: audited once,
    # every request in the request log.
    audited_rows = wait_for(lambda: at_least(refusals_audited(sec, "wrong_recipient", since), 1), "the audit row")
    attack.audited += audited_rows
    assert audited_rows == 1
    assert sql(sec, "SELECT count(*) FROM logs_requestlog r JOIN connectors_channel c ON c.id = r.channel_id "
                    "WHERE r.id > %s AND c.slug = 'wecom' AND r.status_code = 403", logged_since)[0][0] == len(attempts)

    # The control: the same message for our own corp and app is taken.
    msg_id = str(secrets.randbelow(10**18))
    assert post_wecom(sec, crypto, wecom_plaintext(corp_id=w["corp_id"], agent_id=w["agent_id"], msg_id=msg_id),
                      outer_agent_id=w["agent_id"]) == 200
    assert inbound_count(sec, msg_id) == 1

"""Input attacks on the running gateway: whatever an outsider sends, every entry point answers with
its normal refusal (4xx, the JSON error shape; an error frame on the socket), never a 500, a dead
socket or a half-written message (issue 15, "trust core").

- webhook timestamps that are not times (non-numeric, huge, negative, NaN/inf);
- text PostgreSQL cannot store (NUL, lone surrogates, NaN/Infinity in JSON) on every channel;
- wrong JSON types in the OpenAI face's fields;
- an unexpected failure while the web chat handles a frame (the socket is told and stays up);
- the widget's session endpoint under the channel's IP rules and the per-address visitor rate;
- WeCom AI bot callbacks that name no bot, or another;
- odd bytes in headers, empty and non-JSON bodies, wrong content types, odd charsets.

A refusal is judged from the outside: the status and body, the frames, and the rows written.
"""
from __future__ import annotations

import asyncio
import http.client as httpclient
import json
import secrets
import time
import uuid
from urllib.parse import quote, urlsplit

import pytest
import websockets

from apps.conversations.management.commands.seed_demo import DEMO_USERS
from apps.identities.roles import Role
from devtools.stack import http, visitor_token

from .conftest import sql
from .test_access import (
    BAD_REQUEST,
    bearer,
    crm_signed,
    frames_until,
    recv_json,
    set_ip_rules,
    shell,
    slack_signed,
    wait_for,
    ws_url,
)

pytestmark = [pytest.mark.services, pytest.mark.e2e]

NOT_TIMES = ["abc", "", "1e400", "99999999999999999999", "1" + "0" * 400, "9" * 5000, "-1700000000", "-1",
             "NaN", "nan", "inf", "-inf", "Infinity", "1_700_000_000", "0x65", "1700000000.5e400", " ", "²"]


# --- helpers ------------------------------------------------------------------------------------


def send(url: str, body: bytes = b"", headers: dict | None = None, method: str = "POST"):
    """One request with exactly these bytes and headers (values may be bytes: sent as they are).
    Returns (status, parsed JSON or text)."""
    parts = urlsplit(url)
    conn = httpclient.HTTPConnection(parts.hostname, parts.port, timeout=60)
    try:
        conn.putrequest(method, parts.path + (f"?{parts.query}" if parts.query else ""), skip_accept_encoding=True)
        for name, value in (headers or {}).items():
            conn.putheader(name, value)
        if body or method == "POST":
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body or None)
        response = conn.getresponse()
        status, raw = response.status, response.read()
    finally:
        conn.close()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode(errors="replace")


def error_code(body) -> str:
    """The gateway's (or the face's) error code in ``body``, '' when it has none."""
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return str(body["error"].get("code") or "")
    return ""


def refused_properly(status: int, body, codes: tuple[int, ...] = (400, 401)) -> bool:
    return status in codes and bool(error_code(body))


def webhook_url(sec, kind: str) -> str:
    return f"{sec.url}/api/v1/channels/{sec.demo['channels'][kind]['slug']}/webhook"


def inbound_count(sec) -> int:
    return sql(sec, "SELECT count(*) FROM conversations_message WHERE direction = 'in'")[0][0]


def conversation_count(sec) -> int:
    return sql(sec, "SELECT count(*) FROM conversations_conversation")[0][0]


@pytest.fixture(scope="module")
def key(sec) -> str:
    """This module's own API key, so lockouts and rates from other tests never meet it."""
    return sec.stack.manage("create_api_key", DEMO_USERS[Role.CUSTOMER], "--name", "input-attacks").strip()


# --- 1. webhook timestamps --------------------------------------------------------------------------


def test_webhook_timestamps_that_are_not_times_are_refused(sec, attack):
    """Each webhook's timestamp (header or query) set to garbage, huge, negative, NaN or inf: the
    connector's refusal (401/400 with the error shape), never a 500."""
    from apps.connectors.wecom_crypto import WeComCrypto

    slack_body = json.dumps({"type": "event_callback", "event": {"type": "message"}}).encode()
    aibot = sec.demo["channels"]["wecom_aibot"]
    wecom = sec.demo["channels"]["wecom"]
    aibot_crypto = WeComCrypto(token=aibot["token"], encoding_aes_key=aibot["encoding_aes_key"], receive_id="")
    wecom_crypto = WeComCrypto(token=wecom["token"], encoding_aes_key=wecom["encoding_aes_key"],
                               receive_id=wecom["corp_id"])

    def tries(stamp: str):
        enc = stamp.encode("latin-1", "replace")
        query = quote(stamp)
        yield "slack", webhook_url(sec, "slack"), slack_body, {
            "Content-Type": "application/json", "X-Slack-Request-Timestamp": enc, "X-Slack-Signature": "v0=00"}
        yield "crm", webhook_url(sec, "crm"), b"{}", {
            "Content-Type": "application/json", "X-Gateway-Timestamp": enc, "X-Gateway-Signature": "sha256=00"}
        yield "feishu", webhook_url(sec, "feishu"), b"{}", {
            "Content-Type": "application/json", "X-Lark-Request-Timestamp": enc, "X-Lark-Request-Nonce": "1",
            "X-Lark-Signature": "00"}
        yield "dingtalk", webhook_url(sec, "dingtalk"), b"{}", {
            "Content-Type": "application/json", "timestamp": enc, "sign": "AA=="}
        yield "hubspot", webhook_url(sec, "hubspot"), b"{}", {
            "Content-Type": "application/json", "X-HubSpot-Request-Timestamp": enc, "X-HubSpot-Signature-v3": "AA=="}
        yield "zendesk", webhook_url(sec, "zendesk"), b"{}", {
            "Content-Type": "application/json", "X-Zendesk-Webhook-Signature-Timestamp": enc,
            "X-Zendesk-Webhook-Signature": "AA=="}
        encrypt = aibot_crypto.encrypt(b"{}")
        yield "wecom_aibot", (f"{webhook_url(sec, 'wecom_aibot')}?timestamp={query}&nonce=1"
                              f"&msg_signature={aibot_crypto.signature(stamp, '1', encrypt)}"), \
            json.dumps({"encrypt": encrypt}).encode(), {"Content-Type": "application/json"}
        encrypt = wecom_crypto.encrypt(b"<xml/>")
        yield "wecom", (f"{webhook_url(sec, 'wecom')}?timestamp={query}&nonce=1"
                        f"&msg_signature={wecom_crypto.signature(stamp, '1', encrypt)}"), \
            f"<xml><Encrypt><![CDATA[{encrypt}]]></Encrypt></xml>".encode(), {"Content-Type": "text/xml"}
        yield "wecom GET", (f"{webhook_url(sec, 'wecom')}?timestamp={query}&nonce=1&echostr=abc"
                            "&msg_signature=00"), b"", {}

    failures = []
    for stamp in NOT_TIMES:
        for name, url, body, headers in tries(stamp):
            status, answer = send(url, body, headers, method="GET" if name.endswith("GET") else "POST")
            ok = refused_properly(status, answer)
            attack.tried(admitted=not ok)
            if not ok:
                failures.append((name, stamp[:24], status, str(answer)[:160]))
    assert not failures, failures


# --- 2. text PostgreSQL cannot store ------------------------------------------------------------------


UNSTORABLE_TEXTS = {"NUL": "a\u0000b", "lone surrogate": "a\ud800b", "low surrogate": "\udfff"}


def test_unstorable_text_is_a_bad_request_everywhere(sec, attack, key):
    """NUL, lone surrogates, and NaN/Infinity in JSON, in a message's text, its metadata (values and
    keys), a face turn, a socket frame and signed webhooks (Slack, CRM): 400 ``invalid_request``
    (an error frame on the socket, which keeps working), and nothing stored."""
    messages_before, conversations_before = inbound_count(sec), conversation_count(sec)
    failures = []

    def judge(name: str, status: int, answer, *, face: bool = False):
        ok = status == 400 and (answer.get("error", {}).get("type") == "invalid_request_error" if face
                                else error_code(answer) == BAD_REQUEST) if isinstance(answer, dict) else False
        attack.tried(admitted=not ok)
        if not ok:
            failures.append((name, status, str(answer)[:200]))

    api = f"{sec.url}/api/v1/messages"
    face = f"{sec.url}/v1/chat/completions"
    json_headers = {"Content-Type": "application/json", **bearer(key)}
    for label, text in UNSTORABLE_TEXTS.items():
        for where, body in [
            ("message", {"message": text}),
            ("metadata value", {"message": "hi", "metadata": {"k": text}}),
            ("metadata key", {"message": "hi", "metadata": {text: "v"}}),
            ("nested metadata", {"message": "hi", "metadata": {"k": [{"deep": text}]}}),
        ]:
            judge(f"api {where} {label}", *send(api, json.dumps(body).encode(), json_headers))
        for where, turns, model in [
            ("last turn", [{"role": "user", "content": text}], "assistant"),
            ("earlier turn", [{"role": "system", "content": text}, {"role": "user", "content": "hi"}], "assistant"),
            ("content part", [{"role": "user", "content": [{"type": "text", "text": text}]}], "assistant"),
            ("model", [{"role": "user", "content": "hi"}], f"assistant{text}"),
        ]:
            status, answer = send(face, json.dumps({"model": model, "messages": turns}).encode(), json_headers)
            judge(f"face {where} {label}", status, answer, face=True)
    # A NUL in a header (the idempotency key) is refused by the HTTP server itself: a 400 all the same.
    status, answer = send(api, b'{"message": "hi"}', {**json_headers, "Idempotency-Key": b"k\x00"})
    attack.tried(admitted=status != 400)
    assert status == 400, answer
    for label, number in [("NaN", b"NaN"), ("Infinity", b"-Infinity")]:
        judge(f"api metadata {label}", *send(api, b'{"message": "hi", "metadata": {"x": %s}}' % number, json_headers))
        judge(f"face {label}", *send(face, b'{"model": "assistant", "temperature": %s, "messages": '
                                           b'[{"role": "user", "content": "hi"}]}' % number, json_headers), face=True)

    # Signed webhooks: Slack and the CRM, with the bad text in the message and elsewhere in the payload.
    for label, text in UNSTORABLE_TEXTS.items():
        event = {"type": "message", "channel": "C0INPUT", "user": "U0INPUT", "text": f"hello {text}",
                 "ts": f"{time.time():.6f}", "channel_type": "im"}
        for where, payload in [
            ("text", {"type": "event_callback", "event_id": f"Ev{uuid.uuid4().hex[:8]}", "event": event}),
            ("team id", {"type": "event_callback", "event_id": f"Ev{uuid.uuid4().hex[:8]}", "team_id": text,
                         "event": {**event, "text": "hello", "ts": f"{time.time():.6f}"}}),
        ]:
            body = json.dumps(payload).encode()
            judge(f"slack {where} {label}", *send(webhook_url(sec, "slack"), body, slack_signed(sec, body)))
        for where, payload in [
            ("message", {"id": f"in-{uuid.uuid4().hex}", "user_id": "input-attack", "message": f"hi {text}"}),
            ("user id", {"id": f"in-{uuid.uuid4().hex}", "user_id": f"u{text}", "message": "hi"}),
            ("event id", {"id": f"in-{text}", "user_id": "input-attack", "message": "hi"}),
            ("extra field", {"id": f"in-{uuid.uuid4().hex}", "user_id": "input-attack", "message": "hi",
                             "note": text}),
        ]:
            body = json.dumps(payload).encode()
            judge(f"crm {where} {label}", *send(webhook_url(sec, "crm"), body, crm_signed(sec, body)))
    for label, raw in [("NaN", b"NaN"), ("Infinity", b"Infinity")]:
        body = (b'{"type": "event_callback", "event_id": "EvNaN%s", "x": %s, "event": {"type": "message", '
                b'"channel": "C0INPUT", "user": "U0INPUT", "text": "hi", "ts": "%s", "channel_type": "im"}}'
                % (secrets.token_hex(4).encode(), raw, f"{time.time():.6f}".encode()))
        judge(f"slack {label}", *send(webhook_url(sec, "slack"), body, slack_signed(sec, body)))
        body = b'{"id": "in-%s", "user_id": "input-attack", "message": "hi", "score": %s}' % (
            secrets.token_hex(4).encode(), raw)
        judge(f"crm {label}", *send(webhook_url(sec, "crm"), body, crm_signed(sec, body)))

    # The web chat: a new visitor's bad first frames make no user and no conversation; the socket works on.
    slug = sec.demo["channels"]["webchat"]["slug"]

    async def websocket():
        async with websockets.connect(ws_url(sec.url, slug, visitor_token(sec.url, slug))) as ws:
            frames = []
            for label, text in UNSTORABLE_TEXTS.items():
                for frame in ({"type": "message", "message": text},
                              {"type": "message", "message": "hi", "client_id": f"c{text}"}):
                    await ws.send(json.dumps(frame))
                    frames.append((label, await recv_json(ws)))
            return frames

    for label, frame in asyncio.run(websocket()):
        ok = frame.get("type") == "error" and frame.get("code") == BAD_REQUEST
        attack.tried(admitted=not ok)
        if not ok:
            failures.append((f"websocket {label}", frame))
    assert not failures, failures
    assert inbound_count(sec) == messages_before, "a refused message was stored"
    assert conversation_count(sec) == conversations_before, "a refused message opened a conversation"

    # The same channels still take a clean message.
    status, answer = send(api, json.dumps({"message": "clean after the attack"}).encode(), json_headers)
    assert status == 202, answer


# --- 3. the OpenAI face's field types -----------------------------------------------------------------


def test_face_fields_of_the_wrong_type_are_bad_requests(sec, attack, key):
    """``model``, ``messages``, a turn, its ``role`` and ``content`` (and the other fields the face
    reads) of every wrong JSON type: 400 in OpenAI's error shape, never a 500."""
    user = {"role": "user", "content": "hi"}
    wrong = [1, 1.5, True, None, [], ["assistant"], {}, {"a": 1}]
    bodies = []
    bodies += [{"model": value, "messages": [user]} for value in wrong]
    bodies += [{"model": "assistant", "messages": value} for value in [1, "hi", {}, {"role": "user"}, True, None, []]]
    bodies += [{"model": "assistant", "messages": [value]} for value in [1, "hi", [], None, True, [user]]]
    bodies += [{"model": "assistant", "messages": [{**user, "role": value}]} for value in wrong + ["nobody", ""]]
    bodies += [{"model": "assistant", "messages": [{**user, "content": value}]}
               for value in [1, 1.5, True, {}, {"text": "hi"}, [1], [None], [{"type": "text", "text": 5}],
                             [{"type": "text"}], [[]], ""]]
    bodies += [{"model": "assistant", "messages": [user], field: value}
               for field, values in [("stream", ["yes", 1, [], {}, None]), ("n", [2, "1", [], {}, 1.5, True]),
                                     ("stream_options", [[], "x", 1, {"include_usage": []}]),
                                     ("tools", [1, "x", [1], {"a": 1}]), ("functions", [[{}], "f"])]
               for value in values]
    bodies += [[], "hi", 1, None, True]
    failures = []
    for body in bodies:
        status, answer = send(f"{sec.url}/v1/chat/completions", json.dumps(body).encode(),
                              {"Content-Type": "application/json", **bearer(key)})
        ok = (status == 400 and isinstance(answer, dict) and isinstance(answer.get("error"), dict)
              and answer["error"].get("type") == "invalid_request_error" and answer["error"].get("message"))
        attack.tried(admitted=not ok)
        if not ok:
            failures.append((json.dumps(body)[:100], status, str(answer)[:160]))
    assert not failures, failures


# --- 4. an unexpected failure while the web chat handles a frame ----------------------------------------


def test_a_failing_frame_gets_internal_error_and_the_socket_lives_on(sec, attack):
    """A frame whose handling fails unexpectedly (here PostgreSQL refuses the insert through a
    trigger: not an outage, not the client's fault) is answered with an ``internal_error`` frame,
    logged, and the same socket then sends a message that is acknowledged."""
    marker = f"explode-{uuid.uuid4().hex[:8]}"
    sql_commit(sec, f"""
        CREATE OR REPLACE FUNCTION input_attack_fail() RETURNS trigger AS $$
        BEGIN
          IF NEW.text LIKE '%{marker}%' THEN RAISE EXCEPTION 'input attack: refused by trigger'; END IF;
          RETURN NEW;
        END $$ LANGUAGE plpgsql;
        CREATE TRIGGER input_attack_fail BEFORE INSERT ON conversations_message
          FOR EACH ROW EXECUTE FUNCTION input_attack_fail();""")
    slug = sec.demo["channels"]["webchat"]["slug"]

    async def run():
        async with websockets.connect(ws_url(sec.url, slug, visitor_token(sec.url, slug))) as ws:
            await ws.send(json.dumps({"type": "message", "message": marker, "client_id": "boom"}))
            failed = await frames_until(ws, "error")
            await ws.send(json.dumps({"type": "message", "message": "and now?", "client_id": "after"}))
            return failed, await frames_until(ws, "ack")

    try:
        failed, ack = asyncio.run(run())
    finally:
        sql_commit(sec, "DROP TRIGGER IF EXISTS input_attack_fail ON conversations_message;"
                        "DROP FUNCTION IF EXISTS input_attack_fail();")
    attack.tried(admitted=failed.get("code") != "internal_error")
    assert failed["code"] == "internal_error" and failed["message"] and failed.get("client_id") == "boom", failed
    assert "trigger" not in failed["message"], "the frame leaks the internal error"
    assert ack["client_id"] == "after"
    assert wait_for(lambda: "input attack: refused by trigger" in sec.stack.logs(), what="the error in the log")


def sql_commit(sec, statements: str) -> None:
    import psycopg

    with psycopg.connect(sec.database, connect_timeout=5, autocommit=True) as conn:
        conn.execute(statements)


# --- 5. the widget's session endpoint -------------------------------------------------------------------

WIDGET_ORIGIN = "https://shop.example"
WIDGET_ENV = {"GATEWAY_LIMIT_KEY_PREFIX": "gwwidget", "WEBCHAT_VISITORS_PER_IP_RATE": "4/d"}


@pytest.fixture(scope="module")
def widget_channel(sec):
    slug = sec.demo["channels"]["webchat"]["slug"]
    shell(sec, "from apps.connectors.models import Channel\n"
               f"c = Channel.objects.get(slug={slug!r})\nc.allowed_origins = [{WIDGET_ORIGIN!r}]\nc.save()\n")
    return slug


def widget_session(base: str, slug: str):
    return send(f"{base}/chat/{slug}/widget-session", headers={"Origin": WIDGET_ORIGIN}, method="GET")


def test_widget_session_obeys_ip_rules(sec, attack, widget_channel):
    """A deny rule (global or the chat's) or an allow-list without our address refuses the widget's
    token like the chat page (403 ``ip_forbidden``); with the rules lifted it is served again."""
    assert widget_session(sec.url, widget_channel)[0] == 200  # the control
    try:
        for label, rules in [("global deny", [("deny", "127.0.0.1/32", None)]),
                             ("chat deny", [("deny", "127.0.0.0/8", widget_channel)]),
                             ("allow-list without us", [("allow", "10.0.0.0/8", widget_channel)])]:
            set_ip_rules(sec, rules)
            status, answer = wait_for(lambda: (r := widget_session(sec.url, widget_channel))[0] != 200 and r,
                                      what=f"{label} to apply on the widget session")
            attack.tried(admitted=status != 403)
            assert (status, error_code(answer)) == (403, "ip_forbidden"), (label, status, answer)
            assert "visitor_token" not in answer
    finally:
        set_ip_rules(sec, [])
    wait_for(lambda: widget_session(sec.url, widget_channel)[0] == 200, what="the rules to lift")


def test_widget_session_mints_visitors_at_the_per_address_rate(sec, attack, widget_channel):
    """From one address: past WEBCHAT_VISITORS_PER_IP_RATE the widget gets 429 ``rate_limited``
    instead of a new visitor token, and the chat page counts against the same budget."""
    base = sec.stack.daphne(env=WIDGET_ENV)
    answers = [widget_session(base, widget_channel) for _ in range(6)]
    statuses = [status for status, _ in answers]
    for status in statuses[4:]:
        attack.tried(admitted=status == 200)
    assert statuses[:4] == [200] * 4 and set(statuses[4:]) == {429}, statuses
    assert {error_code(answer) for _, answer in answers[4:]} == {"rate_limited"}
    status, _page, _ = http("GET", f"{base}/chat/{widget_channel}/")
    attack.tried(admitted=status == 200)
    assert status == 429


# --- 6. WeCom AI bot callbacks that name no bot, or another ------------------------------------------------


def test_aibot_callback_without_or_for_another_bot_is_refused(sec, attack):
    """A correctly encrypted and signed AI bot callback without ``aibotid``, or naming another bot,
    is refused (401) and nothing is stored; the same callback for our bot is taken."""
    from apps.connectors.wecom_crypto import WeComCrypto

    aibot = sec.demo["channels"]["wecom_aibot"]
    crypto = WeComCrypto(token=aibot["token"], encoding_aes_key=aibot["encoding_aes_key"], receive_id="")

    def callback(**fields) -> tuple[int, str]:
        msgid = uuid.uuid4().hex
        data = {"msgid": msgid, "chattype": "single", "from": {"userid": "aibot-attacker"}, "msgtype": "text",
                "text": {"content": "hello bot"}, "response_url": "http://127.0.0.1:9/unused", **fields}
        encrypt = crypto.encrypt(json.dumps(data).encode())
        stamp, nonce = str(int(time.time())), secrets.token_hex(4)
        query = f"msg_signature={crypto.signature(stamp, nonce, encrypt)}&timestamp={stamp}&nonce={nonce}"
        status, _ = send(f"{webhook_url(sec, 'wecom_aibot')}?{query}", json.dumps({"encrypt": encrypt}).encode(),
                         {"Content-Type": "application/json"})
        return status, msgid

    def stored(msgid: str) -> int:
        return sql(sec, "SELECT count(*) FROM conversations_message WHERE external_id = %s", msgid)[0][0]

    for fields in ({}, {"aibotid": None}, {"aibotid": ""}, {"aibotid": "another-bot"}, {"aibotid": ["x"]}):
        status, msgid = callback(**fields)
        taken = stored(msgid)
        attack.tried(admitted=status < 400 or taken)
        assert (status, taken) == (401, 0), fields
    status, msgid = callback(aibotid=aibot["bot_id"])
    assert status == 200 and stored(msgid) == 1


# --- 7. more: wrong JSON types in signed webhook bodies --------------------------------------------------


def test_signed_webhook_bodies_with_wrong_types_are_refused_not_crashed(sec, attack):
    """Correctly signed Slack, CRM, DingTalk and Feishu bodies whose fields have the wrong JSON types
    (DingTalk signs only its timestamp, so anyone holding one signed header pair can send any body
    for an hour): taken or refused with a 4xx and the error shape, never a 5xx."""
    from apps.connectors.dingtalk import sign as dingtalk_sign
    from tests.connectors.connector_helpers import slack_event
    from tests.connectors.feishu_dingtalk_helpers import dingtalk_message, feishu_body, feishu_event, feishu_headers

    channels = sec.demo["channels"]
    tries = []
    for event in ({"ts": "abc"}, {"ts": "1e400"}, {"ts": 5}, {"user": ["U1"]}, {"text": {"a": 1}},
                  {"channel": None}, {"thread_ts": {"x": 1}}, {"channel_type": 7}, {"bot_id": []},
                  {"user": "U" * 300}, {"channel": "D" * 300}):
        body = json.dumps(slack_event("message_im.json", **event)).encode()
        tries.append((f"slack {event}", webhook_url(sec, "slack"), body, slack_signed(sec, body)))
    body = json.dumps({"type": "event_callback", "event": "not an object", "event_id": []}).encode()
    tries.append(("slack event string", webhook_url(sec, "slack"), body, slack_signed(sec, body)))
    for payload in ({"id": 1.5, "user_id": "u", "message": "hi"}, {"id": "x", "user_id": ["u"], "message": "hi"},
                    {"id": "x", "user_id": "u", "message": {"t": 1}}, {"id": "y", "user_id": "u", "message": "hi",
                                                                       "timestamp": 10**400},
                    {"id": "z", "user_id": "u", "message": "hi", "thread_id": {"a": [1]}}, [1, 2], "text", 7,
                    {"id": "i" * 300, "user_id": "u", "message": "hi"},
                    {"id": "w", "user_id": "u" * 300, "message": "hi"}):
        body = json.dumps(payload).encode()
        tries.append((f"crm {str(payload)[:40]}", webhook_url(sec, "crm"), body, crm_signed(sec, body)))
    ding = channels["dingtalk"]
    for fields in ({"sessionWebhookExpiredTime": 10**400}, {"createAt": "later"}, {"createAt": 10**400},
                   {"text": "hi"}, {"conversationType": ["1"]}, {"senderStaffId": 5}, {"msgId": None},
                   {"robotCode": {"a": 1}}, {"msgId": "m" * 300}, {"senderStaffId": "s" * 300}):
        payload = dingtalk_message(session_base=sec.platforms.dingtalk_session_base_url, conversation_type="1",
                                   **fields)
        stamp = str(int(time.time() * 1000))
        tries.append((f"dingtalk {str(fields)[:40]}", webhook_url(sec, "dingtalk"), json.dumps(payload).encode(),
                      {"Content-Type": "application/json", "timestamp": stamp,
                       "sign": dingtalk_sign(stamp, ding["app_secret"])}))
    feishu = channels["feishu"]
    for fields in ({"mentions": 5}, {"mentions": True}, {"content": 5}, {"content": "[1]"}, {"root_id": {"a": 1}},
                   {"create_time": "1e400"}, {"chat_type": []}, {"message_id": 7}, {"message_id": "om_" + "m" * 300},
                   {"sender": "ou_" + "s" * 300}):
        event = feishu_event(**{"chat_type": "p2p", **fields})
        event["header"]["token"] = feishu["verification_token"]
        body = feishu_body(event, encrypt_key=feishu["encrypt_key"])
        tries.append((f"feishu {str(fields)[:40]}", webhook_url(sec, "feishu"), body,
                      {"Content-Type": "application/json", **feishu_headers(body, encrypt_key=feishu["encrypt_key"])}))
    failures = []
    for name, url, body, headers in tries:
        status, answer = send(url, body, headers)
        ok = status < 400 or (status < 500 and bool(error_code(answer)))
        attack.tried(admitted=not ok)
        if not ok:
            failures.append((name, status, str(answer)[:160]))
    assert not failures, failures


# --- 8. more: headers, bodies, content types ---------------------------------------------------------------


def test_odd_headers_bodies_and_content_types_are_refused_not_crashed(sec, attack, key):
    """Odd bytes in headers (Authorization, Idempotency-Key, X-Forwarded-For, Origin, Content-Type),
    empty and non-object bodies, bytes that are not UTF-8, unknown charsets and wrong content types,
    on the API, the face, the widget session and every webhook: taken, or refused with a 4xx and
    the error shape; never a 5xx."""
    api, face = f"{sec.url}/api/v1/messages", f"{sec.url}/v1/chat/completions"
    ok_body = json.dumps({"message": "hi"}).encode()
    face_body = json.dumps({"model": "assistant", "messages": [{"role": "user", "content": "hi"}]}).encode()
    json_type = {"Content-Type": "application/json"}
    tries: list[tuple[str, str, bytes, dict, str]] = []
    for url, good in ((api, ok_body), (face, face_body)):
        name = "api" if url == api else "face"
        for auth in (b"Bearer \xff\xfe", b"Bearer gw_\x00\x01", b"Bearer " + b"A" * 6000, b"\xff", b"Basic \x80",
                     b"Bearer", b"Bearer  ", "Bearer gw_é".encode("latin-1")):
            tries.append((f"{name} auth {auth[:12]!r}", url, good, {**json_type, "Authorization": auth}, "POST"))
        authed = {**json_type, **bearer(key)}
        for body in (b"", b"null", b"[]", b'"hi"', b"1", b"{", b"\xff\xfe\x00", b"\xef\xbb\xbf{}",
                     b'{"message": "\xff"}', b"{}" * 3):
            tries.append((f"{name} body {body[:10]!r}", url, body, authed, "POST"))
        for content_type in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data",
                             "multipart/form-data; boundary=x", "application/json; charset=bogus",
                             "application/json; charset=utf-16", "application/json; charset=\xff", "", "\x00"):
            tries.append((f"{name} content type {content_type!r}", url, good,
                          {**bearer(key), "Content-Type": content_type.encode("latin-1")}, "POST"))
        for header, value in (("Idempotency-Key", b"\xff\xfe\x01"), ("Idempotency-Key", b"k" * 5000),
                              ("X-Forwarded-For", b"\xff, 999.1.1.1, ::ffff:zz"), ("Origin", b"http://\xff"),
                              ("X-Request-ID", b"\xff\x01" * 50)):
            tries.append((f"{name} {header} {value[:8]!r}", url, good, {**authed, header: value}, "POST"))
        tries.append((f"{name} PUT", url, good, authed, "PUT"))
    for kind in ("slack", "crm", "feishu", "dingtalk", "hubspot", "zendesk", "wecom", "wecom_aibot"):
        for body, content_type in ((b"", "application/json"), (b"\xff\xfe", "application/json"),
                                   (b"{}", "text/html"), (b"{}", "application/json; charset=bogus"),
                                   (b"<xml/>", "text/xml"), (b"null", "application/json")):
            tries.append((f"{kind} {content_type} {body[:6]!r}", webhook_url(sec, kind), body,
                          {"Content-Type": content_type}, "POST"))
    slug = sec.demo["channels"]["webchat"]["slug"]
    for origin in (b"\xff\xfe", b"null", b"http://" + b"a" * 3000):
        tries.append((f"widget origin {origin[:8]!r}", f"{sec.url}/chat/{slug}/widget-session", b"",
                      {"Origin": origin}, "GET"))
    failures = []
    for name, url, body, headers, method in tries:
        try:
            status, answer = send(url, body, headers, method=method)
        except (httpclient.HTTPException, ConnectionError) as exc:  # the server refused the bytes itself
            status, answer = 400, {"error": {"code": f"connection: {type(exc).__name__}"}}
        # Odd but harmless bytes may be taken (a 2xx); a refusal is a 4xx with the error shape, or
        # the HTTP server's own 400/431 for bytes it will not parse. Never a 5xx.
        ok = status < 400 or (status < 500 and (bool(error_code(answer)) or status in (400, 431)))
        attack.tried(admitted=not ok)
        if not ok:
            failures.append((name, status, str(answer)[:160]))
    assert not failures, failures

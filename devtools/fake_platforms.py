"""Local stand-ins for the platforms' APIs, speaking their real wire protocols (tests, demo, bench).

Pure aiohttp module: importable without Django settings.

- Slack Web API under ``/slack/api``: ``POST chat.postMessage`` (JSON or form, ``Authorization:
  Bearer xoxb-...``), answering ``{"ok": true, "channel", "ts", "message"}``; scripted failures
  (``script(slack_429=N, retry_after=S)``) answer HTTP 429 ``{"ok": false, "error":
  "ratelimited"}`` with ``Retry-After``.
- WeCom under ``/wecom/cgi-bin``: ``GET gettoken?corpid&corpsecret`` →
  ``{"errcode": 0, "access_token", "expires_in": 7200}``; ``POST message/send?access_token``
  (errcode 42001 for an expired or unknown token); ``GET getcallbackip?access_token`` (the
  published callback ranges, ``WECOM_CALLBACK_IPS``); ``POST webhook/send?key`` (group robot, at most
  20 messages a minute per key, then errcode 45009).
- ``POST /crm/callback``: records CRM reply callbacks with their headers. With
  ``script(crm_secret=S)`` it verifies them as a CRM would (HMAC-SHA256 of
  ``gateway-callback:{X-Gateway-Timestamp}.{body}``, the callback scheme, never the inbound one) and
  answers 401 to anything else (counted in ``crm_rejected``).
- Feishu / Lark under ``/feishu``: ``POST open-apis/auth/v3/tenant_access_token/internal``
  (``{"app_id", "app_secret"}`` → ``{"code": 0, "tenant_access_token": "t-...", "expire": 7200}``) and
  ``POST open-apis/im/v1/messages/{message_id}/reply`` (``Authorization: Bearer t-...``; HTTP 400
  code 99991663 for an unknown or expired token; a ``uuid`` already used for that message is
  answered again without sending twice, as Feishu does; ``script(feishu_429=N)``: HTTP 429 code
  99991400 for the next N replies).
- DingTalk under ``/dingtalk``: ``POST v1.0/oauth2/accessToken`` (``{"appKey", "appSecret"}`` →
  ``{"accessToken", "expireIn": 7200}``), ``POST v1.0/robot/oToMessages/batchSend`` and
  ``POST v1.0/robot/groupMessages/send`` (``x-acs-dingtalk-access-token``; HTTP 401 for an unknown
  or expired token); and the session webhooks under ``/dingtalk-oapi``:
  ``POST robot/sendBySession?session=...`` → ``{"errcode": 0, "errmsg": "ok"}`` (a non-zero errcode
  once scripted to expire them).
- WeCom AI bot ``response_url``, ``POST /wecom/cgi-bin/aibot/response?response_code=CODE`` as WeCom
  hands them out (``FakePlatforms.aibot_response_url()`` makes one): records the plain-JSON
  ``markdown`` / ``template_card`` message posted to it; like WeCom's, a URL is used once (a second
  POST answers a non-zero errcode).
- ``script(slack_hold=True)`` holds every chat.postMessage before Slack takes it, until
  ``script(slack_hold=False)``; a held request whose sender went away meanwhile is dropped, never
  posted (``slack_held``: held now, ``slack_dropped``: dropped). Fault tests kill a worker mid-delivery.
- ``GET /_fake/state``: everything received; ``POST /_fake/reset``; ``POST /_fake/script``.

Use ``FakePlatforms().start_in_thread()`` in tests, or ``manage.py fake_platforms --port N``.
"""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from devtools.aioserve import ThreadedServer, serve_until_signal

ROBOT_MESSAGES_PER_MINUTE = 20
WECOM_CALLBACK_IPS = ("203.0.113.0/28", "198.51.100.17")


@dataclass
class State:
    slack_messages: list[dict] = field(default_factory=list)
    slack_rejected: int = 0
    wecom_messages: list[dict] = field(default_factory=list)
    wecom_token_requests: int = 0
    robot_messages: list[dict] = field(default_factory=list)
    crm_callbacks: list[dict] = field(default_factory=list)
    aibot_responses: list[dict] = field(default_factory=list)
    crm_rejected: int = 0
    crm_secret: str = ""  # set: callbacks are verified (scripted)
    # scripted behaviour
    slack_429: int = 0
    slack_error: str = ""
    retry_after: int = 1
    slack_hold: bool = False
    slack_held: int = 0
    slack_dropped: int = 0
    tokens: dict[str, float] = field(default_factory=dict)  # access_token -> expiry (epoch)
    robot_sent: dict[str, list[float]] = field(default_factory=dict)
    counter: Any = field(default_factory=lambda: itertools.count(1))
    feishu: FeishuState = field(default_factory=lambda: FeishuState())
    dingtalk: DingTalkState = field(default_factory=lambda: DingTalkState())

    def reset(self) -> None:
        self.__dict__.update(State().__dict__)

    def snapshot(self) -> dict:
        return {
            "slack_messages": list(self.slack_messages), "slack_rejected": self.slack_rejected,
            "wecom_messages": list(self.wecom_messages), "wecom_token_requests": self.wecom_token_requests,
            "robot_messages": list(self.robot_messages), "crm_callbacks": list(self.crm_callbacks),
            "feishu": self.feishu.snapshot(),
            "dingtalk": self.dingtalk.snapshot(),
            "aibot_responses": list(self.aibot_responses),
            "crm_rejected": self.crm_rejected,
            "slack_held": self.slack_held, "slack_dropped": self.slack_dropped,
        }


STATE_KEY = web.AppKey("state", State)


# --- Feishu / Lark open platform ------------------------------------------------------------


@dataclass
class FeishuState:
    replies: list[dict] = field(default_factory=list)  # each delivered reply, as posted
    token_requests: int = 0
    tokens: dict[str, float] = field(default_factory=dict)  # tenant_access_token -> expiry (epoch)
    sent_uuids: dict[tuple[str, str], str] = field(default_factory=dict)  # (message_id, uuid) -> reply id
    rate_limited: int = 0  # scripted: the next N replies answer 429 / code 99991400

    def snapshot(self) -> dict:
        return {"replies": list(self.replies), "token_requests": self.token_requests}


async def feishu_tenant_token(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY].feishu
    data = await request.json()
    if not str(data.get("app_id", "")).startswith("cli_") or not data.get("app_secret"):
        return web.json_response({"code": 10003, "msg": "invalid param"}, status=400)
    state.token_requests += 1
    token = f"t-{secrets.token_hex(20)}"
    state.tokens[token] = time.time() + 7200
    return web.json_response({"code": 0, "msg": "ok", "tenant_access_token": token, "expire": 7200})


async def feishu_reply(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY].feishu
    token = request.headers.get("Authorization", "").removeprefix("Bearer ")
    if state.tokens.get(token, 0.0) < time.time():
        return web.json_response({"code": 99991663, "msg": "Invalid access token for authorization."}, status=400)
    if state.rate_limited > 0:
        state.rate_limited -= 1
        return web.json_response({"code": 99991400, "msg": "request trigger frequency limit"}, status=429)
    data = await request.json()
    message_id = request.match_info["message_id"]
    if data.get("msg_type") != "text" or not isinstance(data.get("content"), str):
        return web.json_response({"code": 230001, "msg": "invalid message content"}, status=400)
    try:
        text = json.loads(data["content"])["text"]
    except (ValueError, KeyError, TypeError):
        return web.json_response({"code": 230001, "msg": "invalid message content"}, status=400)
    dedupe = (message_id, str(data.get("uuid") or ""))
    if dedupe[1] and dedupe in state.sent_uuids:
        reply_id = state.sent_uuids[dedupe]
    else:
        reply_id = f"om_{secrets.token_hex(16)}"
        state.replies.append({"message_id": message_id, "msg_type": "text", "text": text, "uuid": data.get("uuid"),
                              "reply_in_thread": data.get("reply_in_thread", False), "token": token})
        if dedupe[1]:
            state.sent_uuids[dedupe] = reply_id
    return web.json_response({"code": 0, "msg": "success", "data": {
        "message_id": reply_id, "root_id": message_id, "parent_id": message_id, "msg_type": "text",
        "create_time": str(int(time.time() * 1000)), "body": {"content": data["content"]},
    }})


# --- DingTalk open platform ------------------------------------------------------------------


@dataclass
class DingTalkState:
    session_messages: list[dict] = field(default_factory=list)  # replies through sessionWebhook
    api_messages: list[dict] = field(default_factory=list)  # replies through the robot send API
    token_requests: int = 0
    tokens: dict[str, float] = field(default_factory=dict)  # accessToken -> expiry (epoch)
    sessions_expired: bool = False

    def snapshot(self) -> dict:
        return {"session_messages": list(self.session_messages), "api_messages": list(self.api_messages),
                "token_requests": self.token_requests}


async def dingtalk_access_token(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY].dingtalk
    data = await request.json()
    if not data.get("appKey") or not data.get("appSecret"):
        return web.json_response({"code": "invalidClientIdOrSecret", "message": "无效的appKey或appSecret"},
                                 status=400)
    state.token_requests += 1
    token = secrets.token_hex(16)
    state.tokens[token] = time.time() + 7200
    return web.json_response({"accessToken": token, "expireIn": 7200})


async def dingtalk_robot_send(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY].dingtalk
    token = request.headers.get("x-acs-dingtalk-access-token", "")
    if state.tokens.get(token, 0.0) < time.time():
        return web.json_response({"code": "InvalidAuthentication", "message": "不合法的access_token"}, status=401)
    data = await request.json()
    group = request.match_info["kind"] == "groupMessages/send"
    target = data.get("openConversationId") if group else data.get("userIds")
    if not data.get("robotCode") or data.get("msgKey") != "sampleText" or not target:
        return web.json_response({"code": "invalidParameter", "message": "参数错误"}, status=400)
    try:
        content = json.loads(data.get("msgParam") or "")["content"]
    except (ValueError, KeyError, TypeError):
        return web.json_response({"code": "invalidParameter.msgParam", "message": "msgParam 错误"}, status=400)
    state.api_messages.append({"api": request.match_info["kind"], "robotCode": data["robotCode"],
                               ("openConversationId" if group else "userIds"): target, "content": content})
    answer: dict = {"processQueryKey": secrets.token_urlsafe(12)}
    if not group:
        answer.update(invalidStaffIdList=[], flowControlledStaffIdList=[])
    return web.json_response(answer)


async def dingtalk_send_by_session(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY].dingtalk
    if not request.query.get("session") or state.sessions_expired:
        return web.json_response({"errcode": 300001, "errmsg": "session is expired"})
    data = await request.json()
    if data.get("msgtype") != "text" or not (data.get("text") or {}).get("content"):
        return web.json_response({"errcode": 40035, "errmsg": "缺少参数 json"})
    state.session_messages.append({"session": request.query["session"], "content": data["text"]["content"]})
    return web.json_response({"errcode": 0, "errmsg": "ok"})


def add_dingtalk_routes(app: web.Application) -> None:
    app.router.add_post("/dingtalk/v1.0/oauth2/accessToken", dingtalk_access_token)
    app.router.add_post("/dingtalk/v1.0/robot/{kind:oToMessages/batchSend|groupMessages/send}", dingtalk_robot_send)
    app.router.add_post("/dingtalk-oapi/robot/sendBySession", dingtalk_send_by_session)


def add_feishu_routes(app: web.Application) -> None:
    app.router.add_post("/feishu/open-apis/auth/v3/tenant_access_token/internal", feishu_tenant_token)
    app.router.add_post("/feishu/open-apis/im/v1/messages/{message_id}/reply", feishu_reply)


async def _payload(request: web.Request) -> dict:
    if request.content_type == "application/json":
        return await request.json()
    return dict(await request.post())


async def slack_post_message(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    if not request.headers.get("Authorization", "").startswith("Bearer xox"):
        return web.json_response({"ok": False, "error": "not_authed"})
    if state.slack_429 > 0:
        state.slack_429 -= 1
        state.slack_rejected += 1
        return web.json_response({"ok": False, "error": "ratelimited"}, status=429,
                                 headers={"Retry-After": str(state.retry_after)})
    if state.slack_hold and not await _held_until_released(request, state):
        return web.json_response({"ok": False, "error": "request_timeout"}, status=503)
    if state.slack_error:
        state.slack_rejected += 1
        return web.json_response({"ok": False, "error": state.slack_error})
    data = await _payload(request)
    if not data.get("channel") or not (data.get("text") or data.get("blocks")):
        return web.json_response({"ok": False, "error": "no_text" if data.get("channel") else "channel_not_found"})
    ts = f"{time.time():.6f}"
    message = {"channel": data["channel"], "text": data.get("text"), "thread_ts": data.get("thread_ts"), "ts": ts,
               "token": request.headers["Authorization"][len("Bearer "):]}
    state.slack_messages.append(message)
    return web.json_response({"ok": True, "channel": data["channel"], "ts": ts,
                              "message": {"type": "message", "text": data.get("text"), "ts": ts}})


async def _held_until_released(request: web.Request, state: State) -> bool:
    """Hold the request (the platform is slow to take it) until released; False if its sender
    went away meanwhile: the platform never took it."""
    state.slack_held += 1
    try:
        while state.slack_hold:
            if request.transport is None or request.transport.is_closing():
                state.slack_dropped += 1
                return False
            await asyncio.sleep(0.02)
        return True
    finally:
        state.slack_held -= 1


async def wecom_gettoken(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    if not request.query.get("corpid") or not request.query.get("corpsecret"):
        return web.json_response({"errcode": 40013, "errmsg": "invalid corpid"})
    state.wecom_token_requests += 1
    token = secrets.token_urlsafe(24)
    state.tokens[token] = time.time() + 7200
    return web.json_response({"errcode": 0, "errmsg": "ok", "access_token": token, "expires_in": 7200})


async def wecom_getcallbackip(request: web.Request) -> web.Response:
    """The addresses WeCom's callbacks come from (documentation example ranges here)."""
    if request.query.get("access_token") not in request.app[STATE_KEY].tokens:
        return web.json_response({"errcode": 42001, "errmsg": "access_token expired", "ip_list": []})
    return web.json_response({"errcode": 0, "errmsg": "ok", "ip_list": list(WECOM_CALLBACK_IPS)})


async def wecom_message_send(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    token = request.query.get("access_token", "")
    if token not in state.tokens:
        return web.json_response({"errcode": 40014, "errmsg": "invalid access_token"})
    if state.tokens[token] < time.time():
        return web.json_response({"errcode": 42001, "errmsg": "access_token expired"})
    data = await request.json()
    if data.get("msgtype") != "text" or not data.get("touser") or "agentid" not in data:
        return web.json_response({"errcode": 40008, "errmsg": "invalid message type"})
    state.wecom_messages.append(data)
    return web.json_response({"errcode": 0, "errmsg": "ok", "msgid": f"msg-{next(state.counter)}"})


async def robot_send(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    key = request.query.get("key", "")
    if not key:
        return web.json_response({"errcode": 93000, "errmsg": "invalid webhook url"})
    now = time.time()
    recent = [t for t in state.robot_sent.get(key, []) if t > now - 60]
    if len(recent) >= ROBOT_MESSAGES_PER_MINUTE:
        return web.json_response({"errcode": 45009, "errmsg": "api freq out of limit"})
    data = await request.json()
    msgtype = data.get("msgtype")
    if msgtype not in ("text", "markdown") or not (data.get(msgtype) or {}).get("content"):
        return web.json_response({"errcode": 40008, "errmsg": "invalid message type"})
    state.robot_sent[key] = [*recent, now]
    state.robot_messages.append({"key": key, **data})
    return web.json_response({"errcode": 0, "errmsg": "ok"})


async def crm_callback(request: web.Request) -> web.Response:
    body = await request.read()
    state = request.app[STATE_KEY]
    if state.crm_secret:
        signed = b"gateway-callback:" + request.headers.get("X-Gateway-Timestamp", "").encode() + b"." + body
        expected = "sha256=" + hmac.new(state.crm_secret.encode(), signed, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, request.headers.get("X-Gateway-Signature", "")):
            state.crm_rejected += 1
            return web.json_response({"ok": False, "error": "bad signature"}, status=401)
    state.crm_callbacks.append({"headers": dict(request.headers), "body": body.decode()})
    return web.json_response({"ok": True})


async def aibot_response(request: web.Request) -> web.Response:
    """A WeCom AI bot response_url: one message per URL, as WeCom allows."""
    state = request.app[STATE_KEY]
    code = request.query.get("response_code", "")
    if not code or any(r["code"] == code for r in state.aibot_responses):
        return web.json_response({"errcode": 93000, "errmsg": "response_url already used"})
    data = await request.json()
    msgtype = data.get("msgtype")
    if msgtype not in ("markdown", "template_card") or not isinstance(data.get(msgtype), dict):
        return web.json_response({"errcode": 40008, "errmsg": "invalid message type"})
    state.aibot_responses.append({"code": code, **data})
    return web.json_response({"errcode": 0, "errmsg": "ok"})


async def fake_state(request: web.Request) -> web.Response:
    return web.json_response(request.app[STATE_KEY].snapshot())


async def fake_reset(request: web.Request) -> web.Response:
    request.app[STATE_KEY].reset()
    return web.json_response({"ok": True})


async def fake_script(request: web.Request) -> web.Response:
    script(request.app[STATE_KEY], **(await request.json()))
    return web.json_response({"ok": True})


def script(state: State, *, slack_429: int | None = None, retry_after: int | None = None,
           slack_error: str | None = None, expire_wecom_tokens: bool = False,
           expire_feishu_tokens: bool = False, feishu_429: int | None = None,
           expire_dingtalk_tokens: bool = False, expire_dingtalk_sessions: bool = False,
           crm_secret: str | None = None, slack_hold: bool | None = None) -> None:
    if feishu_429 is not None:
        state.feishu.rate_limited = feishu_429
    if expire_dingtalk_tokens:
        state.dingtalk.tokens = {token: 0.0 for token in state.dingtalk.tokens}
    if expire_dingtalk_sessions:
        state.dingtalk.sessions_expired = True
    if expire_feishu_tokens:
        state.feishu.tokens = {token: 0.0 for token in state.feishu.tokens}
    if slack_429 is not None:
        state.slack_429 = slack_429
    if retry_after is not None:
        state.retry_after = retry_after
    if slack_error is not None:
        state.slack_error = slack_error
    if slack_hold is not None:
        state.slack_hold = slack_hold
    if expire_wecom_tokens:
        state.tokens = {token: 0.0 for token in state.tokens}
    if crm_secret is not None:
        state.crm_secret = crm_secret


def create_app() -> web.Application:
    app = web.Application()
    app[STATE_KEY] = State()
    app.router.add_post("/slack/api/chat.postMessage", slack_post_message)
    app.router.add_get("/wecom/cgi-bin/gettoken", wecom_gettoken)
    app.router.add_post("/wecom/cgi-bin/message/send", wecom_message_send)
    app.router.add_get("/wecom/cgi-bin/getcallbackip", wecom_getcallbackip)
    app.router.add_post("/wecom/cgi-bin/webhook/send", robot_send)
    app.router.add_post("/crm/callback", crm_callback)
    add_feishu_routes(app)
    add_dingtalk_routes(app)
    app.router.add_post("/wecom/cgi-bin/aibot/response", aibot_response)
    app.router.add_get("/_fake/state", fake_state)
    app.router.add_post("/_fake/reset", fake_reset)
    app.router.add_post("/_fake/script", fake_script)
    return app


def run_server(host: str = "127.0.0.1", port: int = 8002, *, on_ready: Callable[[str], None] | None = None) -> None:
    """Serve until SIGINT/SIGTERM; ``on_ready(root_url)`` runs once listening."""
    serve_until_signal(create_app(), host, port, on_ready=on_ready)


class FakePlatforms(ThreadedServer):
    """The server on a background thread with its own event loop (tests)."""

    thread_name = "fake-platforms"

    def __init__(self, host: str = "127.0.0.1", port: int = 0):
        super().__init__(create_app(), host, port)

    @property
    def slack_base_url(self) -> str:
        return f"{self.root}/slack/api"

    @property
    def wecom_base_url(self) -> str:
        return f"{self.root}/wecom/cgi-bin"

    @property
    def feishu_base_url(self) -> str:
        return f"{self.root}/feishu"

    @property
    def dingtalk_base_url(self) -> str:
        return f"{self.root}/dingtalk"

    @property
    def dingtalk_session_base_url(self) -> str:
        return f"{self.root}/dingtalk-oapi"

    @property
    def crm_callback_url(self) -> str:
        return f"{self.root}/crm/callback"

    def aibot_response_url(self) -> str:
        """A fresh response_url, as WeCom puts one in each AI bot message callback."""
        return f"{self.wecom_base_url}/aibot/response?response_code={secrets.token_urlsafe(12)}"

    @property
    def state(self) -> State:
        return self.app[STATE_KEY]

    def script(self, **options: Any) -> None:
        self.call_in_loop(lambda: script(self.state, **options))

    def reset(self) -> None:
        self.call_in_loop(self.state.reset)

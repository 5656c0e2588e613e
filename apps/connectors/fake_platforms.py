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
- ``POST /crm/callback``: records CRM reply callbacks with their headers.
- ``script(slack_hold=True)`` holds every chat.postMessage before Slack takes it, until
  ``script(slack_hold=False)``; a held request whose sender went away meanwhile is dropped, never
  posted (``slack_held``: held now, ``slack_dropped``: dropped). Fault tests kill a worker mid-delivery.
- ``GET /_fake/state``: everything received; ``POST /_fake/reset``; ``POST /_fake/script``.

Use ``FakePlatforms().start_in_thread()`` in tests, or ``manage.py fake_platforms --port N``.
"""
from __future__ import annotations

import asyncio
import itertools
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from gateway_project.aioserve import ThreadedServer, serve_until_signal

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

    def reset(self) -> None:
        self.__dict__.update(State().__dict__)

    def snapshot(self) -> dict:
        return {
            "slack_messages": list(self.slack_messages), "slack_rejected": self.slack_rejected,
            "wecom_messages": list(self.wecom_messages), "wecom_token_requests": self.wecom_token_requests,
            "robot_messages": list(self.robot_messages), "crm_callbacks": list(self.crm_callbacks),
            "slack_held": self.slack_held, "slack_dropped": self.slack_dropped,
        }


STATE_KEY = web.AppKey("state", State)


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
    request.app[STATE_KEY].crm_callbacks.append({"headers": dict(request.headers), "body": body.decode()})
    return web.json_response({"ok": True})


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
           slack_hold: bool | None = None) -> None:
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


def create_app() -> web.Application:
    app = web.Application()
    app[STATE_KEY] = State()
    app.router.add_post("/slack/api/chat.postMessage", slack_post_message)
    app.router.add_get("/wecom/cgi-bin/gettoken", wecom_gettoken)
    app.router.add_post("/wecom/cgi-bin/message/send", wecom_message_send)
    app.router.add_get("/wecom/cgi-bin/getcallbackip", wecom_getcallbackip)
    app.router.add_post("/wecom/cgi-bin/webhook/send", robot_send)
    app.router.add_post("/crm/callback", crm_callback)
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
    def crm_callback_url(self) -> str:
        return f"{self.root}/crm/callback"

    @property
    def state(self) -> State:
        return self.app[STATE_KEY]

    def script(self, **options: Any) -> None:
        self.call_in_loop(lambda: script(self.state, **options))

    def reset(self) -> None:
        self.call_in_loop(self.state.reset)

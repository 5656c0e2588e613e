"""Local OpenAI-compatible LLM stand-in for tests, the demo and benchmarks.

Pure aiohttp module: it must stay importable without Django settings.

Endpoints: ``GET /v1/models``, ``POST /v1/chat/completions`` (JSON or SSE stream),
``GET /_fake/stats`` and ``POST /_fake/reset``.  Any API key and any model name are
accepted.  The default answer is ``Echo: <last user message text>``; directives in
the last user message script behaviour (they are removed from the echoed text):

``[[reply:TEXT]]``  answer exactly TEXT (pending tool calls still come first)
``[[delay:S]]``     sleep S seconds before answering
``[[slow:S]]``      sleep S seconds between streamed chunks
``[[fail:STATUS model=M times=N]]``  answer STATUS with an OpenAI error body (429 adds
                    ``Retry-After: 1``); ``model`` restricts it to that request model,
                    ``times`` fails only the first N matching requests, counted per
                    directive text + first user message text
``[[truncate]]``    stream: a few chunks then an abrupt close; JSON: a 200 cut in half
``[[error_event]]`` stream: a few chunks then an error event (``data: {"error": ...}``), as
                    OpenAI sends on a server error mid-answer
``[[no_usage]]``    report no usage (providers that ignore ``stream_options.include_usage``)
``[[null_message]]`` a 200 whose choice has a null ``message`` (stream: a null ``delta``)
``[[answer_model:ID]]``  name ID as the answering model (providers answer with a dated or
                   routed id, not always the one asked for; an empty ID: none)
``[[tool:NAME {json}]]``  ask for tool NAME until a ``tool`` message follows the last
                    user message, then answer ``Tool NAME said: <content>``
``[[tool_loop:NAME {json}]]``  ask for tool NAME on every turn

Token counts are word-based approximations: prompt = sum(words + 4) per message,
completion = words in the answer (at least 1).  ``/_fake/stats`` counts well-formed
chat completion requests only (malformed ones get a 400 and are not counted).
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from aiohttp import web

from devtools.aioserve import ThreadedServer, serve_until_signal

MODELS = ("fake-gpt", "fake-qwen", "fake-glm")

_ERROR_TYPES = {
    400: ("invalid_request_error", None),
    404: ("invalid_request_error", "model_not_found"),
    429: ("requests", "rate_limit_exceeded"),
}

# Leading whitespace is swallowed so "a [[delay:1]] b" echoes as "a b".  Tool
# arguments end at the first "}" followed by "]]", so nested JSON lists still parse.
_DIRECTIVE_RE = re.compile(
    r"\s*\[\[(?:(?P<tool>tool_loop|tool):\s*(?P<name>[\w.\-]+)\s*(?P<args>\{.*?\})?\s*"
    r"|(?P<kind>reply|delay|slow|fail|truncate|error_event|no_usage|null_message|answer_model)"
    r"(?::(?P<arg>.*?))?)\]\]",
    re.DOTALL,
)
_PIECE_RE = re.compile(r"\s*\S+\s*")  # one word plus its following whitespace


class BadRequest(ValueError):
    """A malformed request or directive; answered as an OpenAI-shaped 400."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class FakeLLMConfig:
    """Server-wide behaviour; directives in messages add to it per request."""

    delay_ms: float = 0.0  # fixed latency before every answer
    token_delay_ms: float = 0.0  # pause between streamed chunks
    error_rate: float = 0.0  # probability of an injected 500
    seed: int | None = None  # seeds the error-rate RNG

    def __post_init__(self) -> None:
        if not 0.0 <= self.error_rate <= 1.0:
            raise ValueError("error_rate must be within 0..1")
        if self.delay_ms < 0 or self.token_delay_ms < 0:
            raise ValueError("delays must not be negative")


class _Fail(NamedTuple):
    raw: str  # the directive text, part of the times= counter key
    status: int
    model: str | None
    times: int | None


@dataclass
class Directives:
    reply: str | None = None
    delay: float = 0.0
    slow: float | None = None
    truncate: bool = False
    error_event: bool = False
    no_usage: bool = False
    null_message: bool = False
    answer_model: str | None = None
    fails: list[_Fail] = field(default_factory=list)
    tools: list[tuple[str, str, bool]] = field(default_factory=list)  # name, args, loop


def parse_directives(text: str) -> tuple[str, Directives]:
    """Split ``text`` into (text without directives, parsed directives).

    Raises BadRequest for a directive whose argument cannot be parsed, so a typo in a
    test fails loudly instead of silently echoing.
    """
    found = Directives()

    def take(m: re.Match[str]) -> str:
        if m["tool"]:
            try:
                args = json.dumps(json.loads(m["args"] or "{}"))
            except ValueError as exc:
                raise BadRequest(f"bad tool directive arguments: {exc}") from None
            found.tools.append((m["name"], args, m["tool"] == "tool_loop"))
            return ""
        kind, arg = m["kind"], (m["arg"] or "").strip()
        try:
            if kind == "reply":
                found.reply = m["arg"] or ""
            elif kind == "delay":
                found.delay += float(arg)
            elif kind == "slow":
                found.slow = float(arg)
            elif kind in ("truncate", "error_event", "no_usage", "null_message"):
                setattr(found, kind, True)
            elif kind == "answer_model":
                found.answer_model = arg
            else:
                status, *pairs = arg.split()
                opts = dict(p.split("=", 1) for p in pairs)
                times = int(opts.pop("times")) if "times" in opts else None
                model = opts.pop("model", None)
                if opts or not 400 <= int(status) <= 599:
                    raise ValueError(f"need a 4xx/5xx status and only model=/times=: {arg}")
                found.fails.append(_Fail(m.group().strip(), int(status), model, times))
        except ValueError as exc:
            raise BadRequest(f"bad [[{kind}]] directive: {exc}") from None
        return ""

    return _DIRECTIVE_RE.sub(take, text).strip(), found


def text_of(content: Any) -> str:
    """Text of an OpenAI message content: a string or a list of content parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


class _State:
    """Counters shared by all requests of one app (one event loop, so no locking)."""

    def __init__(self, config: FakeLLMConfig) -> None:
        self.config = config
        self.rng = random.Random(config.seed)
        self.reset()

    def reset(self) -> None:
        self.requests = 0
        self.by_model: dict[str, int] = {}
        self.last_request: dict[str, Any] | None = None
        self.fail_counts: dict[tuple[str, str], int] = {}

    def snapshot(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "by_model": dict(self.by_model),
            "last_request": self.last_request,
        }


STATE_KEY = web.AppKey("fake_llm_state", _State)


def _error(status: int, message: str, param: str | None = None) -> web.Response:
    etype, code = _ERROR_TYPES.get(status, ("server_error", None))
    body = {"error": {"message": message, "type": etype, "param": param, "code": code}}
    headers = {"Retry-After": "1"} if status == 429 else None
    return web.json_response(body, status=status, headers=headers)


def _limit(body: dict[str, Any]) -> Any:
    limit = body.get("max_completion_tokens")
    return body.get("max_tokens") if limit is None else limit


def _validate(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    messages = body.get("messages")
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise BadRequest("'messages' must be a list of message objects", "messages")
    if not isinstance(body.get("model"), str):
        raise BadRequest("'model' must be a string", "model")
    limit = _limit(body)
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise BadRequest("max_tokens must be a positive integer", "max_tokens")
    return body


def _tool_answer(messages: list[dict[str, Any]], results: list[dict[str, Any]], found: Directives) -> str:
    # Prefer the names the client echoed back in its assistant tool_calls; fall back
    # to directive order for clients that drop them.
    names = {
        c.get("id"): (c.get("function") or {}).get("name")
        for m in messages
        for c in (m.get("tool_calls") or [])
        if isinstance(c, dict)
    }
    fallback = [name for name, _, _ in found.tools]
    lines = []
    for i, msg in enumerate(results):
        name = names.get(msg.get("tool_call_id")) or (fallback[i] if i < len(fallback) else "tool")
        lines.append(f"Tool {name} said: {text_of(msg.get('content'))}")
    return "\n".join(lines)


@dataclass
class _Reply:
    """One answer, rendered either as a chat.completion or as SSE chunks."""

    head: dict[str, Any]  # id/created/model/system_fingerprint shared by every chunk
    pieces: list[str]  # content, one word (plus trailing whitespace) per piece
    calls: list[dict[str, Any]]  # tool calls; when present, content is null
    finish: str
    usage: dict[str, int]


def _compose(body: dict[str, Any], last: int, found: Directives, echo: str) -> _Reply:
    messages = body["messages"]
    results = [m for m in messages[last + 1 :] if m.get("role") == "tool"] if last >= 0 else []
    pending = [t for t in found.tools if t[2] or not results]
    calls = [
        {
            "id": f"call_{uuid.uuid4().hex[:24]}",
            "type": "function",
            "function": {"name": name, "arguments": args},
        }
        for name, args, _ in pending
    ]
    pieces: list[str] = []
    finish = "tool_calls" if calls else "stop"
    limit = _limit(body)
    if calls and limit is not None and sum(len(c["function"]["arguments"].split()) for c in calls) > limit:
        # As a provider does: the arguments stop where max_tokens ran out, mid-JSON.
        for call in calls:
            words = call["function"]["arguments"].split()
            call["function"]["arguments"], limit = " ".join(words[:limit]), max(0, limit - len(words))
        finish = "length"
    if not calls:
        if found.reply is not None:
            text = found.reply
        elif results:
            text = _tool_answer(messages, results, found)
        else:
            text = f"Echo: {echo}"
        pieces = _PIECE_RE.findall(text) or ([text] if text else [])
        if limit is not None and len(pieces) > limit:
            pieces, finish = pieces[:limit], "length"
            pieces[-1] = pieces[-1].rstrip()
    prompt = sum(len(text_of(m.get("content")).split()) + 4 for m in messages)
    completion = max(1, len(pieces) + sum(len(c["function"]["arguments"].split()) for c in calls))
    usage = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
    head = {
        "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
        "created": int(time.time()),
        "model": body["model"] if found.answer_model is None else found.answer_model,
        "system_fingerprint": "fp_fake",
    }
    return _Reply(head, pieces, calls, finish, usage)


def _scripted_failure(state: _State, found: Directives, model: str, first_user: str) -> web.Response | None:
    for fail in found.fails:
        if fail.model is not None and fail.model != model:
            continue
        if fail.times is not None:
            key = (fail.raw, first_user)
            state.fail_counts[key] = seen = state.fail_counts.get(key, 0) + 1
            if seen > fail.times:
                continue
        return _error(fail.status, f"fake_llm scripted failure {fail.raw}")
    if state.config.error_rate and state.rng.random() < state.config.error_rate:
        return _error(500, "fake_llm injected failure (error_rate)")
    return None


async def _chat_completions(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE_KEY]
    try:
        body = _validate(await request.read())
        messages = body["messages"]
        users = [i for i, m in enumerate(messages) if m.get("role") == "user"]
        last = users[-1] if users else -1
        echo, found = parse_directives(text_of(messages[last].get("content")) if users else "")
    except BadRequest as exc:
        return _error(400, str(exc), exc.param)

    model = body["model"]
    state.requests += 1
    state.by_model[model] = state.by_model.get(model, 0) + 1
    state.last_request = body
    wait = state.config.delay_ms / 1000 + found.delay
    if wait > 0:
        await asyncio.sleep(wait)
    first_user = text_of(messages[users[0]].get("content")) if users else ""
    failure = _scripted_failure(state, found, model, first_user)
    if failure is not None:
        return failure

    reply = _compose(body, last, found, echo)
    if body.get("stream"):
        slow = found.slow if found.slow is not None else state.config.token_delay_ms / 1000
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        return await _stream(request, reply, slow, include_usage and not found.no_usage, found)
    message = {
        "role": "assistant",
        "content": None if reply.calls else "".join(reply.pieces),
        "refusal": None,
        **({"tool_calls": reply.calls} if reply.calls else {}),
    }
    choice = {"index": 0, "message": None if found.null_message else message, "logprobs": None,
              "finish_reason": reply.finish}
    payload = {**reply.head, "object": "chat.completion", "choices": [choice],
               "usage": None if found.no_usage else reply.usage}
    if found.truncate:
        text = json.dumps(payload)
        return web.Response(body=text[: len(text) // 2].encode(), content_type="application/json")
    return web.json_response(payload)


async def _stream(
    request: web.Request, reply: _Reply, slow: float, include_usage: bool, found: Directives
) -> web.StreamResponse:
    truncate, cut_short = found.truncate, found.truncate or found.error_event
    # Chunks share everything but the delta, so splice JSON text instead of
    # re-serialising a whole dict per word.
    prefix = "data: " + json.dumps({**reply.head, "object": "chat.completion.chunk"})[:-1]
    prefix += ',"choices":[{"index":0,"delta":'
    tail = ',"logprobs":null,"finish_reason":%s}]' + (',"usage":null' if include_usage else "")

    def event(delta: dict[str, Any], reason: str | None = None) -> bytes:
        return f"{prefix}{json.dumps(delta)}{tail % json.dumps(reason)}}}\n\n".encode()

    events = [event({"role": "assistant", "content": None if reply.calls else ""})]
    for i, call in enumerate(reply.calls):  # name first, then arguments, as OpenAI does
        fn = call["function"]
        opening = {**call, "index": i, "function": {"name": fn["name"], "arguments": ""}}
        events.append(event({"tool_calls": [opening]}))
        events.append(event({"tool_calls": [{"index": i, "function": {"arguments": fn["arguments"]}}]}))
    pieces = reply.pieces
    if cut_short:
        # Stop short of the full answer so the client can never mistake it for success.
        pieces = pieces[: max(1, min(3, len(pieces) - 1))]
    events += [event({"content": p}) for p in pieces]
    if found.null_message:
        events.append(f"{prefix}null{tail % 'null'}}}\n\n".encode())
    if found.error_event:
        error = {"error": {"message": "fake_llm scripted error event", "type": "server_error", "code": None}}
        events += [f"data: {json.dumps(error)}\n\n".encode(), b"data: [DONE]\n\n"]
    elif not truncate:
        events.append(event({}, reply.finish))
        if include_usage:
            last = {
                **reply.head,
                "object": "chat.completion.chunk",
                "choices": [],
                "usage": reply.usage,
            }
            events.append(f"data: {json.dumps(last)}\n\n".encode())
        events.append(b"data: [DONE]\n\n")

    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await resp.prepare(request)
    try:
        if slow > 0:
            for i, chunk in enumerate(events):
                if i:
                    await asyncio.sleep(slow)
                await resp.write(chunk)
        else:
            await resp.write(b"".join(events))  # one write: the benchmark path
        if truncate:
            # close() (not abort()) flushes the partial chunks but never sends the
            # terminating zero-length chunk, so the client sees a cut-off body.
            if request.transport is not None:
                request.transport.close()
        else:
            await resp.write_eof()
    except ConnectionError:
        pass  # the client hung up mid-stream (a cancelled request): not a server error
    return resp


async def _models(request: web.Request) -> web.Response:
    created = int(time.time())
    data = [{"id": m, "object": "model", "created": created, "owned_by": "fake"} for m in MODELS]
    return web.json_response({"object": "list", "data": data})


async def _stats(request: web.Request) -> web.Response:
    return web.json_response(request.app[STATE_KEY].snapshot())


async def _reset(request: web.Request) -> web.Response:
    request.app[STATE_KEY].reset()
    return web.json_response({"ok": True})


def create_app(config: FakeLLMConfig | None = None) -> web.Application:
    """Build the aiohttp application (state lives in ``app[STATE_KEY]``)."""
    app = web.Application()
    app[STATE_KEY] = _State(config or FakeLLMConfig())
    app.router.add_get("/v1/models", _models)
    app.router.add_post("/v1/chat/completions", _chat_completions)
    app.router.add_get("/_fake/stats", _stats)
    app.router.add_post("/_fake/reset", _reset)
    return app


def run_server(
    host: str = "127.0.0.1",
    port: int = 8001,
    *,
    on_ready: Callable[[str], None] | None = None,
    **options: Any,
) -> None:
    """Serve in the current thread until SIGINT/SIGTERM, then shut down cleanly.

    ``options`` are FakeLLMConfig fields; ``on_ready(base_url)`` runs once listening.
    """
    serve_until_signal(
        create_app(FakeLLMConfig(**options)), host, port,
        on_ready=None if on_ready is None else (lambda root: on_ready(f"{root}/v1")),
    )


class FakeLLMServer(ThreadedServer):
    """The server on a background thread with its own event loop, for tests.

    ``FakeLLMServer(port=0, **FakeLLMConfig fields).start_in_thread()`` returns the
    base URL (``http://127.0.0.1:PORT/v1``) for ``openai.OpenAI(base_url=...)``;
    ``stop()`` shuts it down (one-shot: build a new instance to start again).  Also
    usable as a context manager.
    """

    thread_name = "fake-llm"

    def __init__(self, host: str = "127.0.0.1", port: int = 0, **options: Any) -> None:
        super().__init__(create_app(FakeLLMConfig(**options)), host, port)

    @property
    def base_url(self) -> str | None:
        return f"{self.root}/v1" if self.root else None

    def start_in_thread(self, timeout: float = 10.0) -> str:
        """Start serving on a daemon thread; return the base URL once it is listening."""
        super().start_in_thread(timeout)
        return self.base_url

    def stats(self) -> dict[str, Any]:
        """Same as GET /_fake/stats (a snapshot; read it between requests)."""
        return self.app[STATE_KEY].snapshot()

    def reset(self) -> None:
        """Same as POST /_fake/reset."""
        self.app[STATE_KEY].reset()

    def __enter__(self) -> FakeLLMServer:
        self.start_in_thread()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

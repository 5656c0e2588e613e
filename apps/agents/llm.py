"""Calling a model through the official ``openai`` client (any OpenAI-compatible provider)."""
from __future__ import annotations

import functools
import logging
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import httpx2
import openai
from django.conf import settings
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from apps.core.errors import LLMError
from gateway_project.plain import is_plain

from .models import LLMModel, Provider, ProviderKeyRefused

logger = logging.getLogger(__name__)


@dataclass
class LLMResult:
    text: str
    model: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    latency_ms: int = 0
    ttft_ms: int | None = None
    finish_reason: str | None = None
    tool_calls: list[dict] = field(default_factory=list)


@dataclass(eq=False)
class _Pool:
    client: openai.OpenAI
    in_flight: int = 0
    idle_since: float = 0.0


class ClientPools:
    """A provider configuration's ``openai`` clients, each with a connection pool of its own; a call
    leases the first whose pool has fewer than GATEWAY_MODEL_CALLS_PER_POOL calls in flight, and a
    new client is made when none has.

    httpx's pool looks at every connection it holds each time a request starts or ends (a ``poll``
    of each idle socket included). One pool under a thousand runs in flight spent a third of a gevent
    worker's time walking itself, and a 5 s model answered in 10 s
    (docs/decisions/model-client-pools.md). Light traffic stays on the first client, so its
    connections are reused as before. A client past the first that has had no call for
    SPILL_IDLE_SECONDS is closed, with its connections: nothing would walk its pool again to let them
    go, and by then they have outlived httpx's keep-alive anyway.
    """

    SPILL_IDLE_SECONDS = 5.0  # httpx's keep-alive expiry

    def __init__(self, make: Callable[[], openai.OpenAI]):
        self._make = make
        self._pools: list[_Pool] = []
        self._lock = threading.Lock()
        self._retired = False

    @contextmanager
    def lease(self) -> Iterator[openai.OpenAI]:
        share = settings.GATEWAY_MODEL_CALLS_PER_POOL
        share = share if share > 0 else float("inf")  # 0 (or less): one pool
        now = time.monotonic()
        with self._lock:
            idle = [pool for pool in self._pools[1:]
                    if not pool.in_flight and now - pool.idle_since > self.SPILL_IDLE_SECONDS]
            if idle:
                self._pools = [pool for pool in self._pools if pool not in idle]
            pool = next((pool for pool in self._pools if pool.in_flight < share), None)
            if pool is None:
                pool = _Pool(self._make())
                self._pools.append(pool)
            pool.in_flight += 1
        try:
            for closing in idle:
                _close_quietly(closing.client)
            yield pool.client
        finally:
            with self._lock:
                pool.in_flight -= 1
                pool.idle_since = time.monotonic()
                done = self._retired and not pool.in_flight
                if done:
                    self._pools.remove(pool)
            if done:
                _close_quietly(pool.client)

    def retire(self) -> None:
        """The provider's URL, key or timeout changed: close these clients, each once its calls
        in flight are done (a call leased before this still finishes on its client)."""
        with self._lock:
            self._retired = True
            idle = [pool for pool in self._pools if not pool.in_flight]
            self._pools = [pool for pool in self._pools if pool.in_flight]
        for pool in idle:
            _close_quietly(pool.client)

    def clients(self) -> list[openai.OpenAI]:
        return [pool.client for pool in self._pools]


def _close_quietly(client: openai.OpenAI) -> None:
    """Close a client that has idled out; a socket that fails to close must not fail a call."""
    try:
        client.close()
    except Exception:
        logger.warning("closing an idle model client failed", exc_info=True)


# A provider's clients, with the configuration (URL, key, timeout) they were made for and when
# that configuration became the provider's current one.
_pools: dict[object, tuple[tuple, ClientPools, float]] = {}
_pools_lock = threading.Lock()


def pools_for(provider: Provider) -> ClientPools:
    """The clients of a provider's current configuration, shared by threads. When its URL, key or
    timeout changes (a rotated key), the clients of the old one are closed once their calls are
    done: they would otherwise hold their connections, and the old key, for the process's life.

    A run that read the provider before the change still calls with the old configuration: a copy
    read before the current configuration came in gets a client for that call alone, and does not
    displace it. (Letting it displace them made the two take turns: 123 clients for 990 calls over
    6 rotations, in a review.) A configuration read later is the provider's, a key set back too.
    """
    config = (provider.base_url, provider.api_key(), float(provider.timeout_seconds))  # 60 and 60.0 alike
    slot = provider.pk if provider.pk is not None else config
    held = _pools.get(slot)
    if held is not None and held[0] == config:
        return held[1]
    with _pools_lock:
        held = _pools.get(slot)
        if held is not None and held[0] == config:
            return held[1]
        pools = _client_pools(config)
        now = time.monotonic()
        if held is not None and getattr(provider, "_loaded_at", now) < held[2]:
            pools.retire()  # read before the current configuration came in: closes after the call
            return pools
        _pools[slot] = (config, pools, now)
    if held is not None:
        held[1].retire()
    return pools


def _client_pools(config: tuple) -> ClientPools:
    base_url, api_key, timeout = config
    # Retries are ours (logged per attempt), so a client makes exactly one.
    return ClientPools(lambda: openai.OpenAI(
        base_url=base_url, api_key=api_key, timeout=timeout, max_retries=0,
        http_client=openai.DefaultHttpxClient(verify=_tls_context())))


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """httpx's default TLS context, built once: each client building its own (the CA bundle read
    and parsed) cost 30 ms, which clients made under a burst of runs paid one after another."""
    return httpx2.create_ssl_context()


def chat(
    model: LLMModel,
    messages: list[dict],
    *,
    max_tokens: int | None = None,
    temperature: float | None = None,
    tools: list[dict] | None = None,
    on_delta: Callable[[str], None] | None = None,
) -> LLMResult:
    """One chat completion. Streams when ``on_delta`` is given (called with each text piece).

    Raises LLMError on any failure, including a stream that ends without a finish reason: a
    truncated answer is never returned as if complete.
    """
    params: dict = {"model": model.name, "messages": messages}
    if max_tokens:
        params["max_tokens"] = max_tokens
    if temperature is not None:
        params["temperature"] = temperature
    if tools:
        params["tools"] = tools
    try:
        pools = pools_for(model.provider)
    except ProviderKeyRefused as exc:
        raise LLMError("provider_misconfigured", str(exc)) from exc
    started = time.monotonic()
    try:
        with pools.lease() as client:
            if on_delta is None:
                result = _complete(client, params)
            else:
                result = _stream(client, params, on_delta, started)
    except openai.APIStatusError as exc:
        raise LLMError(
            "provider_error", _status_text(exc), status=exc.status_code,
            retryable=exc.status_code in (408, 409, 429) or exc.status_code >= 500,
            retry_after=_retry_after(exc),
        ) from exc
    except openai.APITimeoutError as exc:
        raise LLMError("timeout", "The model did not answer in time.", retryable=True) from exc
    except openai.APIConnectionError as exc:
        raise LLMError("connection_error", "The model could not be reached.", retryable=True) from exc
    except (openai.APIResponseValidationError, ValueError) as exc:
        raise LLMError("bad_response", f"Unreadable model response: {exc}", retryable=True) from exc
    except openai.APIError as exc:  # e.g. an error event in a stream: the provider failed, not the gateway
        raise LLMError("provider_error", f"The model provider reported an error: {exc.message}",
                       retryable=True) from exc
    result.latency_ms = int((time.monotonic() - started) * 1000)
    return result


def _create(client: openai.OpenAI, params: dict, *, stream: bool = False):
    """``client.chat.completions.create(**params)``, less that method's walk over the type hints of
    every parameter (``maybe_transform``, a tenth of a worker's time per message): the body built
    here is plain JSON already. The same request, sent and parsed by the client the same way."""
    body = {**params, "stream": True, "stream_options": {"include_usage": True}} if stream else params
    if is_plain("openai_create"):
        return client.chat.completions.create(**body)
    return client.post("/chat/completions", body=body, cast_to=ChatCompletion, stream=stream,
                       stream_cls=openai.Stream[ChatCompletionChunk])


def _complete(client: openai.OpenAI, params: dict) -> LLMResult:
    response = _create(client, params)
    if not response.choices:
        raise LLMError("bad_response", "The model returned no choices.", retryable=True)
    try:  # the client does not validate a response: a field may be missing or null
        choice = response.choices[0]
        usage = response.usage
        return LLMResult(
            text=choice.message.content or "",
            model=response.model or params["model"],
            prompt_tokens=(usage.prompt_tokens or 0) if usage else 0,
            completion_tokens=(usage.completion_tokens or 0) if usage else 0,
            total_tokens=(usage.total_tokens or 0) if usage else 0,
            finish_reason=choice.finish_reason,
            tool_calls=[tc.model_dump() for tc in (choice.message.tool_calls or [])],
        )
    except (AttributeError, TypeError) as exc:
        raise LLMError("bad_response", f"Unreadable model response: {exc}", retryable=True) from exc


def _stream(client: openai.OpenAI, params: dict, on_delta, started: float) -> LLMResult:
    stream = _create(client, params, stream=True)
    pieces: list[str] = []
    tool_calls: dict[int, dict] = {}
    result = LLMResult(text="", model=params["model"])
    try:
        for chunk in stream:
            try:  # as in _complete: nothing in a chunk is validated
                texts = _read_chunk(chunk, result, tool_calls)
            except (AttributeError, TypeError) as exc:
                raise _cut_off("bad_response", f"Unreadable model response: {exc}", pieces, tool_calls,
                               result) from exc
            for text in texts:
                if result.ttft_ms is None:
                    result.ttft_ms = int((time.monotonic() - started) * 1000)
                pieces.append(text)
                on_delta(text)
    except openai.APIConnectionError as exc:
        # The connection dropped mid-answer (the client reports it as a connection error).
        raise _cut_off("truncated_stream", "The model's answer was cut off.", pieces, tool_calls, result) from exc
    except openai.APIError as exc:  # an error event mid-stream
        raise _cut_off("provider_error", f"The model provider reported an error: {exc.message}",
                       pieces, tool_calls, result) from exc
    finally:
        stream.close()
    if result.finish_reason is None:
        raise _cut_off("truncated_stream", "The model's answer was cut off.", pieces, tool_calls, result)
    result.text = "".join(pieces)
    result.tool_calls = [tool_calls[i] for i in sorted(tool_calls)]
    return result


def _read_chunk(chunk: ChatCompletionChunk, result: LLMResult, tool_calls: dict[int, dict]) -> list[str]:
    """Take a chunk's model, usage, tool-call pieces and finish reason into ``result``; its text pieces."""
    if chunk.model:
        result.model = chunk.model
    if chunk.usage:
        result.prompt_tokens = chunk.usage.prompt_tokens or 0
        result.completion_tokens = chunk.usage.completion_tokens or 0
        result.total_tokens = chunk.usage.total_tokens or 0
    texts = []
    for choice in chunk.choices or ():
        delta = choice.delta
        if delta.content:
            texts.append(delta.content)
        for tc in delta.tool_calls or []:
            _merge_tool_call_delta(tool_calls, tc)
        if choice.finish_reason:
            result.finish_reason = choice.finish_reason
    return texts


def _cut_off(code: str, message: str, pieces: list[str], tool_calls: dict[int, dict],
             result: LLMResult) -> LLMError:
    """A stream that failed after some of its answer was generated: the words and tool calls so far
    and any usage the provider reported travel with the error, since the provider bills them
    (model_call books them)."""
    error = LLMError(code, message, retryable=True)
    error.partial = LLMResult(text="".join(pieces), model=result.model, prompt_tokens=result.prompt_tokens,
                              completion_tokens=result.completion_tokens, total_tokens=result.total_tokens,
                              tool_calls=[tool_calls[i] for i in sorted(tool_calls)])
    return error


def _merge_tool_call_delta(calls: dict[int, dict], delta) -> None:
    call = calls.setdefault(
        delta.index, {"id": "", "type": "function", "function": {"name": "", "arguments": ""}}
    )
    if delta.id:
        call["id"] = delta.id
    if delta.function is not None:
        call["function"]["name"] += delta.function.name or ""
        call["function"]["arguments"] += delta.function.arguments or ""


def _retry_after(exc: openai.APIStatusError) -> float | None:
    try:
        value = float(exc.response.headers.get("retry-after", ""))
    except (TypeError, ValueError):
        return None  # absent, or an HTTP date: fall back to our own backoff
    return max(0.0, value)


def _status_text(exc: openai.APIStatusError) -> str:
    body = exc.body if isinstance(exc.body, dict) else {}
    detail = body.get("message") or (body.get("error") or {}).get("message") if body else None
    return f"HTTP {exc.status_code} from the model provider" + (f": {detail}" if detail else "")

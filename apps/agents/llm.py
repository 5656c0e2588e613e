"""Calling a model through the official ``openai`` client (any OpenAI-compatible provider)."""
from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import openai
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from apps.core.errors import LLMError
from gateway_project.plain import is_plain

from .models import LLMModel, Provider, ProviderKeyRefused


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


_clients: dict[tuple, openai.OpenAI] = {}
_clients_lock = threading.Lock()


def client_for(provider: Provider) -> openai.OpenAI:
    """One client (and so one connection pool) per provider configuration, shared by threads."""
    key = (provider.base_url, provider.api_key(), provider.timeout_seconds)
    client = _clients.get(key)
    if client is None:
        with _clients_lock:
            client = _clients.get(key)
            if client is None:
                # Retries are ours (logged per attempt), so the client makes exactly one.
                client = openai.OpenAI(
                    base_url=provider.base_url, api_key=key[1],
                    timeout=provider.timeout_seconds, max_retries=0,
                )
                _clients[key] = client
    return client


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
        client = client_for(model.provider)
    except ProviderKeyRefused as exc:
        raise LLMError("provider_misconfigured", str(exc)) from exc
    started = time.monotonic()
    try:
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
    choice = response.choices[0]
    usage = response.usage
    return LLMResult(
        text=choice.message.content or "",
        model=response.model or params["model"],
        prompt_tokens=usage.prompt_tokens if usage else 0,
        completion_tokens=usage.completion_tokens if usage else 0,
        total_tokens=usage.total_tokens if usage else 0,
        finish_reason=choice.finish_reason,
        tool_calls=[tc.model_dump() for tc in (choice.message.tool_calls or [])],
    )


def _stream(client: openai.OpenAI, params: dict, on_delta, started: float) -> LLMResult:
    stream = _create(client, params, stream=True)
    pieces: list[str] = []
    tool_calls: dict[int, dict] = {}
    result = LLMResult(text="", model=params["model"])
    try:
        for chunk in stream:
            if chunk.model:
                result.model = chunk.model
            if chunk.usage:
                result.prompt_tokens = chunk.usage.prompt_tokens
                result.completion_tokens = chunk.usage.completion_tokens
                result.total_tokens = chunk.usage.total_tokens
            for choice in chunk.choices:
                delta = choice.delta
                if delta.content:
                    if result.ttft_ms is None:
                        result.ttft_ms = int((time.monotonic() - started) * 1000)
                    pieces.append(delta.content)
                    on_delta(delta.content)
                for tc in delta.tool_calls or []:
                    _merge_tool_call_delta(tool_calls, tc)
                if choice.finish_reason:
                    result.finish_reason = choice.finish_reason
    except openai.APIConnectionError as exc:
        # The connection dropped mid-answer (the client reports it as a connection error).
        raise LLMError("truncated_stream", "The model's answer was cut off.", retryable=True) from exc
    finally:
        stream.close()
    if result.finish_reason is None:
        raise LLMError("truncated_stream", "The model's answer was cut off.", retryable=True)
    result.text = "".join(pieces)
    result.tool_calls = [tool_calls[i] for i in sorted(tool_calls)]
    return result


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

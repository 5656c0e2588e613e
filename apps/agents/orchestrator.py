"""Producing an agent's answer: the tool loop, around the fallback chain, around ``call_model``.

    generate()            tool loop: call → run the tools asked for → call again (≤ max steps)
      call_with_fallbacks()  each model of the chain in order, each retried with backoff
        runtime.call_model()   one attempt, logged as an LLMCall row (attempt number included)

Streaming: deltas of an attempt go to the client as they come. If that attempt then fails (a
truncated stream, an error mid-way), ``on_reset()`` tells the client to discard what it got
before the next attempt streams; a half answer is never presented as complete.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable

from django.conf import settings

from apps.conversations.models import Direction
from apps.identities.permissions import user_can_use_agent

from . import llm, runtime
from .models import Tool, agent_by_id, agent_fallback_models, agent_tools
from .tools.runner import run_tool_call

logger = logging.getLogger(__name__)


def generate(message, prompt: list[dict], *, on_delta: Callable[[str], None] | None = None,
             on_reset: Callable[[], None] | None = None) -> llm.LLMResult:
    """The final answer to ``message``; ``prompt`` grows with the tool steps. Raises llm.LLMError.

    Token counts of the result add up every model call of the run (tool steps included).
    """
    agent = message.agent
    allowed = {tool.slug: tool for tool in agent_tools(agent)}
    specs = [tool.spec() for tool in offered_tools(allowed.values(), message.sender)] or None
    totals = [0, 0, 0]
    for step in range(1, settings.GATEWAY_TOOL_MAX_STEPS + 2):
        result = call_with_fallbacks(message, prompt, tools=specs, on_delta=on_delta, on_reset=on_reset)
        totals = [totals[0] + result.prompt_tokens, totals[1] + result.completion_tokens,
                  totals[2] + result.total_tokens]
        if not result.tool_calls:
            result.prompt_tokens, result.completion_tokens, result.total_tokens = totals
            return result
        if step > settings.GATEWAY_TOOL_MAX_STEPS:
            raise llm.LLMError(
                "tool_steps_exceeded",
                f"The model still asked for tools after {settings.GATEWAY_TOOL_MAX_STEPS} tool steps.",
            )
        prompt.append({"role": "assistant", "content": result.text or None, "tool_calls": result.tool_calls})
        for call in result.tool_calls:
            content = run_tool_call(message, call, allowed=allowed, step=step)
            prompt.append({"role": "tool", "tool_call_id": call.get("id") or "", "content": content})
    raise AssertionError("unreachable")  # pragma: no cover


def offered_tools(tools, user) -> list[Tool]:
    """The agent's tools this user may use: what the model is told about. (Permission is checked
    again at execution: a model may ask for anything.)"""
    from apps.identities.permissions import user_can_use_tool

    return [tool for tool in tools if user_can_use_tool(user, tool)]


def model_chain(agent) -> list:
    """The agent's model, then its fallbacks in order; models of disabled providers are skipped."""
    chain = [agent.model] + agent_fallback_models(agent)
    seen, models = set(), []
    for model in chain:
        if model.pk not in seen and model.provider.enabled:
            seen.add(model.pk)
            models.append(model)
    return models


def call_with_fallbacks(message, prompt: list[dict], *, tools, on_delta=None, on_reset=None) -> llm.LLMResult:
    """One model answer: retries with backoff on retryable errors (429, 5xx, timeouts), then the
    next model of the chain. A truncated stream goes straight to the next model. Every attempt is
    numbered (1, 2, ... across the chain) in the LLM call log. Raises the last LLMError."""
    chain = model_chain(message.agent)
    if not chain:
        raise llm.LLMError("no_model", "The agent has no enabled model.")
    attempt = 0
    error: llm.LLMError | None = None
    for model in chain:
        for retry in range(settings.GATEWAY_LLM_RETRIES + 1):
            attempt += 1
            stream = _StreamGuard(on_delta)
            try:
                return runtime.call_model(message, model, prompt, tools=tools,
                                          on_delta=stream.forward if on_delta else None, attempt=attempt)
            except llm.LLMError as exc:
                error = exc
                if stream.sent and on_reset is not None:
                    on_reset()
                logger.warning("model attempt failed", extra={
                    "model": model.name, "attempt": attempt, "error_code": exc.code, "status": exc.status})
            if not error.retryable or error.code == "truncated_stream" or retry == settings.GATEWAY_LLM_RETRIES:
                break
            time.sleep(backoff_seconds(retry, error.retry_after))
    assert error is not None
    raise error


def backoff_seconds(retry: int, retry_after: float | None = None) -> float:
    """The pause before retry number ``retry + 1``: exponential, capped, at least what the
    provider's Retry-After asked for (itself capped, so a provider cannot park a worker)."""
    delay = min(settings.GATEWAY_LLM_BACKOFF_MAX_SECONDS, settings.GATEWAY_LLM_BACKOFF_BASE_SECONDS * 2**retry)
    if retry_after is not None:
        delay = max(delay, min(retry_after, settings.GATEWAY_LLM_RETRY_AFTER_MAX_SECONDS))
    return delay


class _StreamGuard:
    """Forwards one attempt's deltas and remembers whether any reached the client."""

    def __init__(self, on_delta):
        self.on_delta = on_delta
        self.sent = False

    def forward(self, piece: str) -> None:
        self.sent = True
        self.on_delta(piece)


CLIENT_HISTORY_ROLES = {"system", "developer", "user", "assistant"}


def client_history(message) -> list[dict] | None:
    """The earlier turns of an OpenAI face request (put in ``control`` by the face), newest first;
    None when the conversation's stored messages are the history. A client's ``metadata`` never
    gets here. Client system turns become system messages *after* the agent's own system prompt."""
    control = getattr(message, "control", None)
    turns = control.get("client_history") if isinstance(control, dict) else None
    if not isinstance(turns, list):
        return None
    cleaned = [
        {"role": "system" if t["role"] == "developer" else t["role"], "content": t["content"]}
        for t in turns
        if isinstance(t, dict) and t.get("role") in CLIENT_HISTORY_ROLES and isinstance(t.get("content"), str)
    ]
    return list(reversed(cleaned))


def history_for_speaker(rows, sender) -> list[dict]:
    """Earlier turns (direction, text, agent id; newest first) the speaker may be shown.

    A platform thread is one conversation for everyone in it (a Slack channel thread, a WeCom
    group), so its history holds other people's turns. A turn that went to, or came from, an agent
    the speaker may not use is left out: an employee's exchange with an internal agent (and what
    its tools returned) never reaches the prompt of a customer's reply in the same thread."""
    allowed: dict = {}

    def visible(agent_id) -> bool:
        if agent_id is None or sender is None:
            return True
        if agent_id not in allowed:
            agent = agent_by_id(agent_id)
            allowed[agent_id] = agent is None or user_can_use_agent(sender, agent)
        return allowed[agent_id]

    return [{"role": "user" if direction == Direction.INBOUND else "assistant", "content": text}
            for direction, text, agent_id in rows if visible(agent_id)]


def trim_history_to_tokens(texts_newest_first: list[str], budget: int) -> int:
    """How many of the newest earlier messages fit in ``budget`` tokens (0 budget: all).

    Tokens are estimated (about four characters per token, plus a few per message): the window
    is a cost/context guard, not an exact count.
    """
    if budget <= 0:
        return len(texts_newest_first)
    used = 0
    for kept, text in enumerate(texts_newest_first):
        used += len(text) // 4 + 4
        if used > budget:
            return kept
    return len(texts_newest_first)

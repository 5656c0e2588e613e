"""Producing an agent's answer: the tool loop, around the fallback chain, around ``call_model``.

    generate()            tool loop: call → run the tools asked for → call again (≤ max steps)
      call_with_fallbacks()  each model of the chain in order, each retried with backoff
        model_call.call_model()  one attempt, logged as an LLMCall row (attempt number included)

Streaming: deltas of an attempt go to the client as they come. If that attempt then fails (a
truncated stream, an error mid-way), ``on_reset()`` tells the client to discard what it got
before the next attempt streams; a half answer is never presented as complete.
"""
from __future__ import annotations

import itertools
import logging
from collections.abc import Callable

from django.conf import settings
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt, wait_exponential
from tenacity.wait import wait_base

from apps.identities.permissions import user_can_use_tool
from apps.quotas import budgets

from . import llm, model_call
from .models import Tool, agent_fallback_models, agent_tools
from .tools.runner import run_tool_call

logger = logging.getLogger(__name__)


class BudgetHeld(Exception):
    """The run's first model call found what is left of a budget held by other calls in flight:
    nothing was spent and no tool ran, so the run can be tried again from the start shortly."""


def generate(message, prompt: list[dict], *, on_delta: Callable[[str], None] | None = None,
             on_reset: Callable[[], None] | None = None, wait_for_budget: bool = False) -> llm.LLMResult:
    """The final answer to ``message``; ``prompt`` grows with the tool steps. Raises llm.LLMError.

    Token counts of the result add up every model call of the run (tool steps included).
    ``wait_for_budget``: a budget held by other calls at the first step raises BudgetHeld rather
    than failing the message (budgets.QuotaBusy, an LLMError).
    """
    agent = message.agent
    allowed = {tool.slug: tool for tool in agent_tools(agent)}
    specs = [tool.spec() for tool in offered_tools(allowed.values(), message.sender)] or None
    totals = [0, 0, 0]
    for step in range(1, settings.GATEWAY_TOOL_MAX_STEPS + 2):
        try:
            result = call_with_fallbacks(message, prompt, tools=specs, on_delta=on_delta, on_reset=on_reset)
        except budgets.QuotaBusy as busy:
            if step == 1 and wait_for_budget:
                raise BudgetHeld() from busy
            budgets.count_refusal(message.channel, busy.counter)
            raise
        totals = [totals[0] + result.prompt_tokens, totals[1] + result.completion_tokens,
                  totals[2] + result.total_tokens]
        if not result.tool_calls:
            result.prompt_tokens, result.completion_tokens, result.total_tokens = totals
            return result
        if result.finish_reason == "length":
            # Cut off at max_tokens: the calls' arguments may be incomplete (and "" reads as {}),
            # so none of them runs.
            raise llm.LLMError("tool_call_cut_off", "The model ran out of max_tokens in the middle of a tool call.")
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
    numbers = itertools.count(1)

    def attempt(model) -> llm.LLMResult:
        number = next(numbers)
        stream = _StreamGuard(on_delta)
        try:
            return model_call.call_model(message, model, prompt, tools=tools,
                                         on_delta=stream.forward if on_delta else None, attempt=number)
        except llm.LLMError as exc:
            if stream.sent and on_reset is not None:
                on_reset()
            logger.warning("model attempt failed", extra={
                "model": model.name, "attempt": number, "error_code": exc.code, "status": exc.status})
            raise

    error: llm.LLMError | None = None
    for model in chain:
        try:
            return same_model_retries()(attempt, model)
        except llm.LLMError as exc:
            error = exc
    assert error is not None
    raise error


def same_model_retries() -> Retrying:
    """How one model of the chain is retried: GATEWAY_LLM_RETRIES more times on a retryable error
    (never a truncated stream: the next model gets it), pausing ``llm_backoff()`` in between."""
    return Retrying(
        retry=retry_if_exception(
            lambda exc: isinstance(exc, llm.LLMError) and exc.retryable and exc.code != "truncated_stream"),
        stop=stop_after_attempt(settings.GATEWAY_LLM_RETRIES + 1),
        wait=llm_backoff(),
        reraise=True,
    )


def llm_backoff() -> wait_base:
    """The pause before retrying a model: exponential, capped, and at least what the provider's
    Retry-After asked for (itself capped, so a provider cannot park a worker)."""
    return wait_retry_after(
        wait_exponential(multiplier=settings.GATEWAY_LLM_BACKOFF_BASE_SECONDS,
                         max=settings.GATEWAY_LLM_BACKOFF_MAX_SECONDS),
        cap=settings.GATEWAY_LLM_RETRY_AFTER_MAX_SECONDS,
    )


class wait_retry_after(wait_base):  # noqa: N801  (named like tenacity's own strategies)
    """``backoff``'s pause, or the failed attempt's ``retry_after`` (up to ``cap``) when longer."""

    def __init__(self, backoff: wait_base, *, cap: float):
        self.backoff = backoff
        self.cap = cap

    def __call__(self, retry_state: RetryCallState) -> float:
        delay = self.backoff(retry_state)
        error = retry_state.outcome.exception() if retry_state.outcome is not None else None
        retry_after = getattr(error, "retry_after", None)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.cap))
        return delay


class _StreamGuard:
    """Forwards one attempt's deltas and remembers whether any reached the client."""

    def __init__(self, on_delta):
        self.on_delta = on_delta
        self.sent = False

    def forward(self, piece: str) -> None:
        self.sent = True
        self.on_delta(piece)

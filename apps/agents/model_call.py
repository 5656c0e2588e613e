"""One model call of an agent run: its budget reservation and settle, and its LLMCall log row.

Every model call of a run goes through ``call_model`` (fallbacks and tool steps included), so the
per-call concerns (logging, token reservations, giving the database connection back while the
model answers) live in one place.
"""
from __future__ import annotations

import logging
import time

from django.conf import settings
from django.db import connection, transaction

from apps.conversations.models import Message
from apps.logs.metrics import llm_call_observed
from apps.logs.models import LLMCall
from apps.quotas import budgets
from gateway_project.db import Statement, through_outage, write_together

from . import llm
from .models import written_without_a_deleted_agent

logger = logging.getLogger(__name__)

MODEL_ID_CHARS = min(Message._meta.get_field("model").max_length, LLMCall._meta.get_field("model").max_length)


def call_model(message: Message, model, prompt: list[dict], *, tools: list[dict] | None = None,
               on_delta=None, attempt: int = 1) -> llm.LLMResult:
    """One attempt at one model call for ``message``, always logged as an LLMCall row.

    Raises llm.LLMError (QuotaRefused, before the model is called, when a budget is used up).
    """
    max_tokens, temperature = sampling(message)
    reservation = budgets.reserve_model_call(message, model, prompt, max_tokens=max_tokens, tools=tools)
    release_database_connection()
    started = time.monotonic()
    try:
        with budgets.kept(reservation):  # renewed while the model answers, however long it takes
            result = llm.chat(
                model, prompt, max_tokens=max_tokens, temperature=temperature,
                tools=tools, on_delta=on_delta,
            )
    except Exception as exc:  # an LLMError, or a bug: the attempt is logged either way
        _failed(message, model, prompt, tools, reservation, exc, attempt=attempt, started=started)
        raise
    except BaseException:  # the process is stopping
        budgets.release_model_call(reservation)
        raise
    # The id the provider answered with names the reply as an agent's (Message.by_agent) and goes
    # in columns of 100 characters: never empty, never longer (a routed or dated id may be).
    result.model = (result.model or model.name or "unknown")[:MODEL_ID_CHARS]
    if not result.total_tokens:  # the provider reported no usage: the estimate, in the log row as in the budgets
        budgets.estimate_usage(result, prompt, tools)
    usage = budgets.settle_model_call(reservation, result, write_usage=False)
    # The day's usage and the call's log row, in one statement.
    unsettled = budgets.unsettled_usage(reservation)  # the ledger's store failed: recovery re-seeds from the rollup
    call = through_outage(lambda: record_llm_call(message, model=model, result=result, attempt=attempt, usage=usage,
                                                  unsettled=unsettled))
    logger.info(
        "model answered",
        extra={"model": result.model, "total_tokens": result.total_tokens,
               "latency_ms": result.latency_ms, "llm_call_id": call.pk, "attempt": attempt},
    )
    return result


def sampling(message: Message) -> tuple[int, float]:
    """The call's max_tokens and temperature: the agent's, or what an OpenAI face request asked for
    (``control["sampling"]``, set by the face alone), its max_tokens never above the agent's. What
    the reservation counts on is what the model is told (an agent's 0 means the default)."""
    agent = message.agent
    max_tokens, temperature = agent.max_tokens or settings.GATEWAY_QUOTA_DEFAULT_MAX_TOKENS, agent.temperature
    control = getattr(message, "control", None)
    asked = control.get("sampling") if isinstance(control, dict) else None
    if isinstance(asked, dict):
        if isinstance(asked.get("max_tokens"), int) and asked["max_tokens"] > 0:
            max_tokens = min(max_tokens, asked["max_tokens"])
        if isinstance(asked.get("temperature"), int | float) and 0 <= asked["temperature"] <= 2:
            temperature = float(asked["temperature"])
    return max_tokens, temperature


def _failed(message: Message, model, prompt, tools, reservation, exc: BaseException, *, attempt: int,
            started: float) -> None:
    """Log a failed attempt; the words a cut-off stream already sent (``exc.partial``) are billed
    by the provider, so they are booked and logged at their usage, the rest of the reservation given back."""
    latency_ms = int((time.monotonic() - started) * 1000)
    partial = getattr(exc, "partial", None)
    if partial is None or not (partial.text or partial.tool_calls or partial.total_tokens):
        budgets.release_model_call(reservation)
        record_llm_call(message, model=model, error=exc, attempt=attempt, latency_ms=latency_ms)
        return
    if not partial.total_tokens:
        budgets.estimate_usage(partial, prompt, tools)
    usage = budgets.settle_model_call(reservation, partial, write_usage=False)
    unsettled = budgets.unsettled_usage(reservation)
    through_outage(lambda: record_llm_call(message, model=model, error=exc, attempt=attempt, latency_ms=latency_ms,
                                           usage=usage, unsettled=unsettled, partial=partial))


def release_database_connection() -> None:
    """Give this thread's database connection back to the pool while a model answers.

    A model can take many seconds; a worker thread holding a pooled connection all that time would
    make the pool (and PostgreSQL's max_connections) the limit on concurrent agent runs. Without a
    pool, or inside a transaction, the connection is kept: reopening it would cost more than it saves.
    """
    if connection.settings_dict.get("OPTIONS", {}).get("pool") and not connection.in_atomic_block:
        connection.close()


def record_llm_call(message: Message, *, model, result: llm.LLMResult | None = None,
                    error: BaseException | None = None, attempt: int = 1, usage: Statement | None = None,
                    unsettled=None, latency_ms: int = 0, partial: llm.LLMResult | None = None) -> LLMCall:
    """The LLMCall row of one attempt; ``usage`` (the day's usage upsert) is written with it, atomically,
    and so is ``unsettled`` (an UnsettledUsage row: the call's settle did not reach the ledger).
    A failed attempt's row has its ``latency_ms`` and, if its stream was cut off, the ``partial``
    answer's usage and cost."""
    agent = message.agent
    fields = dict(
        message=message, conversation_id=message.conversation_id, user_id=message.sender_id,
        channel_id=message.channel_id, agent=agent, model=model.name,
        provider=model.provider.slug, attempt=attempt,
        api_key_id=message.api_key_id, request_id=message.request_id,
    )
    if result is not None:
        fields.update(
            model=result.model, status=LLMCall.Status.OK,
            prompt_tokens=result.prompt_tokens, completion_tokens=result.completion_tokens,
            total_tokens=result.total_tokens, latency_ms=result.latency_ms, ttft_ms=result.ttft_ms,
            cost=model.cost(result.prompt_tokens, result.completion_tokens),
        )
    else:
        fields.update(status=LLMCall.Status.ERROR, error=str(error)[:2000], latency_ms=latency_ms)
        if partial is not None:
            fields.update(prompt_tokens=partial.prompt_tokens, completion_tokens=partial.completion_tokens,
                          total_tokens=partial.total_tokens,
                          cost=model.cost(partial.prompt_tokens, partial.completion_tokens))
    call = LLMCall(**fields)

    def write() -> None:
        if unsettled is not None and usage is not None:  # rare: the ledger's store failed at settle
            with transaction.atomic():
                write_together(usage, call)
                unsettled.llm_call = call
                unsettled.save(force_insert=True)
        elif usage is not None:
            write_together(usage, call)
        else:
            call.save(force_insert=True)

    written_without_a_deleted_agent(call, write)
    llm_call_observed(call)
    return call

"""Running an agent on one inbound message: claim → history → model → reply → deliver.

``agent_run`` is what the Celery task calls. It is idempotent under redelivery: the message is
claimed with one conditional UPDATE (only an accepted message, or one whose previous worker's lease
ran out, can be claimed), and a database constraint allows one agent reply per inbound message.
The claim's lease is renewed while the run is alive (``leases.kept``), so only a dead run's
message is taken over.

Delivery is claimed the same way: the run that stores a reply holds its delivery lease from the
insert on; anyone else (recovery, after that lease ran out) claims it with a conditional UPDATE
(``deliver_pending``). A reply is sent by one holder at a time and marked sent once.
"""
from __future__ import annotations

import logging
from datetime import timedelta

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models import Q
from django.utils import timezone

from apps.conversations.models import Direction, Message, Status
from apps.core.errors import AgentFailed
from apps.logs.metrics import llm_call_observed
from apps.logs.models import LLMCall
from apps.logs.structured import message_id_var, request_id_var
from apps.quotas import budgets
from gateway_project.db import (
    Statement,
    Update,
    is_database_outage,
    stored,
    through_outage,
    update_then_fetch,
    write_together,
)

from . import leases, llm, orchestrator
from .models import agent_by_id

logger = logging.getLogger(__name__)


class WaitingForEarlier(Exception):
    """An earlier message of the same conversation is still being answered: try again shortly."""


class DatabaseUnavailable(Exception):
    """The database went away during the run and the message is not answered: try again shortly.

    ``claimed_attempt`` is the message's ``attempts`` as this run claimed it (None if the claim
    was not made or already given back); the retry passes it as ``release_attempt``.
    """

    def __init__(self, claimed_attempt: int | None):
        super().__init__("database unavailable during the agent run")
        self.claimed_attempt = claimed_attempt


def agent_run(message_id, *, ignore_order: bool = False, release_attempt: int | None = None) -> Message | None:
    """Answer one inbound message. Returns the reply, or None if there was nothing to do.

    Raises WaitingForEarlier (nothing changed) while an earlier message of its conversation is
    in flight; the caller retries later, and finally passes ``ignore_order=True``.

    Raises DatabaseUnavailable when the database fails mid-run; the caller retries later with
    ``release_attempt=exc.claimed_attempt``, which first gives back the claim the failed run left.
    """
    token = message_id_var.set(str(message_id))
    request_token = None
    message = None
    try:
        if release_attempt is not None:
            release_claim(message_id, release_attempt)
            release_attempt = None
        message = claim(message_id, ignore_order=ignore_order)
        if message is None:
            return None
        # The id of the request that brought the message in, so its logs join up with the reply's.
        request_token = request_id_var.set(message.request_id or None)
        with leases.kept(message.pk):  # however long the run takes, nobody else claims it meanwhile
            try:
                reply = _answer(message)  # a delivered reply's run hands over when it records the delivery
            except Exception as exc:
                if is_database_outage(exc):
                    raise
                # A bug or an outage must not leave the sender waiting in silence.
                logger.exception("agent run crashed")
                fail_message(message, llm.LLMError("internal_error", "The agent run crashed."))
                reply = None
            if reply is None and message.status != Status.ACCEPTED:  # not put back for a human (handoff)
                hand_over(message)
        return reply
    except Exception as exc:
        # The database went away (PostgreSQL restarting, a pool timeout, a cancelled statement): the
        # run is retried rather than the message failed, since nothing about the message is wrong.
        if not is_database_outage(exc):
            raise
        logger.warning("database unavailable during the agent run; it will be retried",
                       extra={"error": str(exc)[:500]})
        if message is not None:
            _take_back_streamed_text(message)
        claimed = message.attempts if message is not None else release_attempt
        raise DatabaseUnavailable(claimed) from exc
    finally:
        if request_token is not None:
            request_id_var.reset(request_token)
        message_id_var.reset(token)


def claim(message_id, *, ignore_order: bool = False) -> Message | None:
    """Take the message for this worker, or None if it is answered or another worker holds it.

    Messages of one conversation are answered in arrival order: the claim fails with
    WaitingForEarlier while an earlier inbound message is accepted or leased, or an earlier
    message's reply is being delivered by a live deliverer (a delivery that died or was deferred
    holds nothing up: its lease is out).

    One statement claims and reads the message (UPDATE … RETURNING, with whether a human has the
    conversation); its channel, agent and sender come from the per-process configuration cache.
    (The ORM's seven-table select_related spent more time in PostgreSQL's planner than running.)
    """
    now = timezone.now()
    lease_until = stored(Message, "lease_until", now + timedelta(seconds=settings.GATEWAY_AGENT_LEASE_SECONDS))
    claimable, params = _claimable(message_id, now, ignore_order=ignore_order)
    claimed = list(Message.objects.raw(CLAIM_SQL.format(claimable=claimable),
                                       [Status.PROCESSING, lease_until, *params]))
    if not claimed:
        if not ignore_order and _waits_for_earlier(message_id, now):
            logger.info("waiting for an earlier message of the conversation")
            from apps.routing.services import announce_if_held

            announce_if_held(message_id)  # held for a human: the staff inbox shows it
            raise WaitingForEarlier()
        logger.info("message not claimable (answered or in progress)")
        return None
    message = claimed[0]
    from apps.connectors.models import channel_by_id
    from apps.identities.models import user_by_id

    # Copies of rows kept per process; the conversation loads on first use (few runs need it).
    for field, by_id in (("channel", channel_by_id), ("agent", agent_by_id), ("sender", user_by_id)):
        pk = getattr(message, f"{field}_id")
        related = by_id(pk) if pk is not None else None
        if related is not None:
            setattr(message, field, related)
    return message


_MESSAGES = Message._meta.db_table
CLAIM_SQL = f"""
UPDATE {_MESSAGES} SET status = %s, attempts = attempts + 1, lease_until = %s WHERE {{claimable}}
RETURNING *, EXISTS (
    SELECT 1 FROM routing_handoff h WHERE h.conversation_id = {_MESSAGES}.conversation_id AND h.ended_at IS NULL
) AS in_handoff
"""
# An inbound message that is waiting, or whose lease ran out.
CLAIMABLE_SQL = "id = %s AND direction = %s AND (status = %s OR (status = %s AND lease_until < %s))"
# No earlier inbound message of the conversation accepted or leased, and no earlier message's reply
# being delivered by a live deliverer right now (its delivery lease is renewed while it retries), so
# replies reach the platform in order. A reply whose deliverer died, or whose delivery was deferred,
# has no live lease and holds nothing up: recovery delivers it on its own.
IN_ORDER_SQL = f"""
NOT EXISTS (
    SELECT 1 FROM {_MESSAGES} e WHERE e.conversation_id = {_MESSAGES}.conversation_id AND e.direction = %s
    AND e.created_at < {_MESSAGES}.created_at AND (e.status = %s OR (e.status = %s AND e.lease_until >= %s)))
AND NOT EXISTS (
    SELECT 1 FROM {_MESSAGES} r JOIN {_MESSAGES} q ON q.id = r.reply_to_id
    WHERE r.conversation_id = {_MESSAGES}.conversation_id AND r.direction = %s AND r.status = %s
    AND r.lease_until >= %s AND q.created_at < {_MESSAGES}.created_at)
"""


def _claimable(message_id, now, *, ignore_order: bool = False, in_order: bool = True) -> tuple[str, list]:
    """The SQL condition (and its parameters) for "this message may be claimed now", with values
    as the database stores them (SQLite: uuid hex, naive UTC text). ``in_order=False`` asks the
    opposite of the order rule: claimable but for an earlier message."""
    db_now = stored(Message, "created_at", now)
    pk = stored(Message, "id", message_id)
    sql, params = CLAIMABLE_SQL, [pk, Direction.INBOUND, Status.ACCEPTED, Status.PROCESSING, db_now]
    if not ignore_order:
        sql += f" AND {'' if in_order else 'NOT '}({IN_ORDER_SQL})"
        params += [Direction.INBOUND, Status.ACCEPTED, Status.PROCESSING, db_now,
                   Direction.OUTBOUND, Status.PENDING, db_now]
    return sql, params


def _waits_for_earlier(message_id, now) -> bool:
    """Whether the unclaimed message is claimable but for an earlier one of its conversation.

    If so, the message gets a wait lease (until its task's next re-check, at the longest, plus a
    claim's lease): recovery leaves a waiting message to the one task chain already waiting on it.
    """
    condition, params = _claimable(message_id, now, in_order=False)
    wait = settings.GATEWAY_ORDER_RETRY_MAX_DELAY_SECONDS + settings.GATEWAY_AGENT_LEASE_SECONDS
    until = stored(Message, "lease_until", now + timedelta(seconds=wait))
    with connection.cursor() as cursor:
        cursor.execute(f"UPDATE {_MESSAGES} SET lease_until = %s WHERE {condition}", [until, *params])
        return cursor.rowcount > 0


def _take_back_streamed_text(message: Message) -> None:
    """The retry answers from the start: a client shown part of this run's answer drops it."""
    try:
        connector = message.channel.connector
        if connector.wants_stream(message):
            connector.send_reset(message)
    except Exception:  # the channel layer may be down too; the retry's reply still replaces it
        logger.warning("could not tell the client to drop a partial answer", exc_info=True)


def give_up_after_outage(message_id, claimed_attempt: int | None) -> None:
    """The database stayed out through every retry: fail the message (if it is still this run's,
    or waiting) and tell the sender, rather than leave it silent. Raises if the database is out."""
    claimable = Q(status=Status.ACCEPTED)
    if claimed_attempt is not None:
        claimable |= Q(status=Status.PROCESSING, attempts=claimed_attempt)
    message = Message.objects.filter(claimable, pk=message_id, direction=Direction.INBOUND).first()
    if message is not None:
        fail_message(message, llm.LLMError("database_unavailable", "The database stayed unavailable."))


def release_claim(message_id, attempt: int) -> int:
    """Give back the claim of a run the database failed under, so the retry can claim it again.

    Only the claim that run made is released (``attempts`` is still ``attempt``): a message
    answered meanwhile, or claimed again after its lease ran out, is left as it is.
    """
    return Message.objects.filter(
        pk=message_id, direction=Direction.INBOUND, status=Status.PROCESSING, attempts=attempt
    ).update(status=Status.ACCEPTED, lease_until=None)


def hand_over(message: Message, *, sent: Message | None = None) -> None:
    """Queue the conversation's next waiting message now that this one is done, rather than
    leaving it to find out at its next re-check (a burst from one sender drains at model speed).

    ``sent``: the reply just delivered, recorded as sent by the same statement that looks for the
    next message (every run asks: one prepared statement, not an ORM query).
    """
    from .dispatch import enqueue_agent_run

    params = [stored(Message, "conversation", message.conversation_id), Direction.INBOUND, Status.ACCEPTED,
              stored(Message, "created_at", message.created_at)]
    if sent is None:
        with connection.cursor() as cursor:
            cursor.execute(NEXT_WAITING_SQL, params)
            row = cursor.fetchone()
    else:
        sent.updated_at = timezone.now()
        recorded = Update(Message, sent.pk, {"status": sent.status, "attempts": sent.attempts,
                                             "lease_until": None, "updated_at": sent.updated_at})
        row = through_outage(lambda: update_then_fetch(recorded, NEXT_WAITING_SQL, params))  # it was sent
    if row is not None:
        waiting = Message._meta.pk.to_python(row[0])
        transaction.on_commit(lambda: enqueue_agent_run(waiting))


NEXT_WAITING_SQL = f"""
SELECT id FROM {_MESSAGES} WHERE conversation_id = %s AND direction = %s AND status = %s AND created_at > %s
ORDER BY created_at LIMIT 1
"""


def _answer(message: Message) -> Message | None:
    from apps.routing.services import hold_for_handoff

    if hold_for_handoff(message):
        return None  # a human has the conversation
    connector = message.channel.connector
    prompt = build_prompt(message)
    on_delta = on_reset = None
    if connector.wants_stream(message):
        def on_delta(piece: str) -> None:
            connector.send_delta(message, piece)

        def on_reset() -> None:
            connector.send_reset(message)
    try:
        # Tool loop, retries and the fallback chain; every model call goes through call_model.
        result = orchestrator.generate(message, prompt, on_delta=on_delta, on_reset=on_reset)
    except llm.LLMError as exc:
        fail_message(message, exc)
        return None
    reply = through_outage(lambda: save_reply(message, result))  # the answer is paid for: keep it
    if reply is None:
        return None
    deliver(reply, inbound=message, then_hand_over=True)
    return reply


def call_model(message: Message, model, prompt: list[dict], *, tools: list[dict] | None = None,
               on_delta=None, attempt: int = 1) -> llm.LLMResult:
    """One attempt at one model call for ``message``, always logged as an LLMCall row.

    Every model call of an agent run goes through here (fallbacks and tool steps included), so
    per-call concerns (logging, token reservations) live in one place. Raises llm.LLMError.
    """
    agent = message.agent
    # Raises QuotaRefused (an LLMError) before the model is called when a budget is used up.
    reservation = budgets.reserve_model_call(message, model, prompt, max_tokens=agent.max_tokens, tools=tools)
    release_database_connection()
    try:
        result = llm.chat(
            model, prompt, max_tokens=agent.max_tokens, temperature=agent.temperature,
            tools=tools, on_delta=on_delta,
        )
    except llm.LLMError as exc:
        budgets.release_model_call(reservation)
        record_llm_call(message, model=model, error=exc, attempt=attempt)
        raise
    except BaseException:
        budgets.release_model_call(reservation)
        raise
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


def release_database_connection() -> None:
    """Give this thread's database connection back to the pool while a model answers.

    A model can take many seconds; a worker thread holding a pooled connection all that time would
    make the pool (and PostgreSQL's max_connections) the limit on concurrent agent runs. Without a
    pool, or inside a transaction, the connection is kept: reopening it would cost more than it saves.
    """
    if connection.settings_dict.get("OPTIONS", {}).get("pool") and not connection.in_atomic_block:
        connection.close()


def build_prompt(message: Message) -> list[dict]:
    """System prompt + the conversation's recent messages (oldest first) + this message."""
    agent = message.agent
    window = min(agent.history_messages, settings.GATEWAY_HISTORY_MESSAGES)
    # Newest first. The OpenAI face brings the client's own history instead of the conversation's.
    earlier = orchestrator.client_history(message)
    if earlier is None:
        # Only the turns the speaker may see (a platform thread is shared: orchestrator docs).
        earlier = orchestrator.history_for_speaker(
            Message.objects.filter(conversation_id=message.conversation_id, created_at__lt=message.created_at)
            .exclude(direction=Direction.INBOUND, status=Status.FAILED)
            .order_by("-created_at")
            .values_list("direction", "text", "agent_id")[:window],
            message.sender,
        )
    earlier = earlier[:window]
    earlier = earlier[: orchestrator.trim_history_to_tokens([t["content"] for t in earlier], agent.history_tokens)]
    prompt = [{"role": "system", "content": agent.system_prompt}] if agent.system_prompt else []
    prompt.extend(reversed(earlier))
    prompt.append({"role": "user", "content": message.text})
    return prompt


def save_reply(message: Message, result: llm.LLMResult) -> Message | None:
    """Store the reply and mark the message answered, atomically. None if already answered."""
    now = timezone.now()
    # At least 0: the web server's and the worker's clocks may disagree (the column is unsigned).
    latency_ms = max(0, int((now - message.created_at).total_seconds() * 1000))
    reply = Message(
        conversation_id=message.conversation_id,
        channel_id=message.channel_id,
        direction=Direction.OUTBOUND,
        status=Status.PENDING,
        reply_to=message,
        agent=message.agent,
        text=result.text,
        model=result.model,
        prompt_tokens=result.prompt_tokens,
        completion_tokens=result.completion_tokens,
        total_tokens=result.total_tokens,
        latency_ms=latency_ms,
    )
    # Stored with this run's delivery lease: nobody else delivers it while this run is alive.
    reply.lease_until = now + timedelta(seconds=settings.GATEWAY_AGENT_LEASE_SECONDS)
    answered = {"status": Status.ANSWERED, "lease_until": None, "error_code": "", "error_message": ""}
    try:
        write_together(Update(Message, message.pk, answered), reply)
    except IntegrityError:
        if (stored := _stored_by_this_run(message)) is not None:
            # This run's write went in but the connection broke before PostgreSQL said so, and
            # through_outage wrote again: the stored reply is this run's, still to be delivered.
            logger.warning("reply already stored by this run before the connection broke; delivering it")
            return stored
        logger.warning("reply already stored by another run; not answering twice")
        return None
    return reply


def _stored_by_this_run(message: Message) -> Message | None:
    """The undelivered reply to ``message`` if this run stored it: the message is answered and no
    run claimed it since this one (its attempts are still this run's)."""
    return Message.objects.filter(
        reply_to=message, direction=Direction.OUTBOUND, status=Status.PENDING,
        reply_to__status=Status.ANSWERED, reply_to__attempts=message.attempts,
    ).first()


def deliver(reply: Message, *, inbound: Message, then_hand_over: bool = False) -> None:
    """Hand the reply to the channel's connector (retrying transient errors) and record the outcome
    on the reply (never on ``inbound``, which is answered whatever happens to its delivery).

    The caller holds the reply's delivery lease (``save_reply`` stored it so, or ``deliver_pending``
    claimed it); it is renewed while the send goes on. Outcomes: sent; failed (the platform refused,
    or kept failing through every retry); or still pending with the lease given back, when the
    gateway's own means failed, for recovery to deliver later. ``then_hand_over``: then
    hand_over(inbound), in the same statement as the outcome if it was sent.
    """
    from apps.connectors.base import ChannelMisconfigured
    from apps.core.http import ConnectorError, send_with_retries

    connector = inbound.channel.connector

    def send() -> None:
        try:
            connector.send(reply, inbound=inbound)
        except (ConnectorError, ChannelMisconfigured):
            raise
        except Exception as exc:
            # Not the platform's answer but the gateway's own means failing (e.g. redis.ConnectionError
            # from the channel layer): retried like any transient error, then left for recovery.
            error = ConnectorError(f"delivery means unavailable: {type(exc).__name__}: {exc}")
            error.deferred = True
            raise error from exc

    with leases.kept(reply.pk):
        try:
            reply.attempts += send_with_retries(send)
        except (ConnectorError, ChannelMisconfigured) as exc:
            reply.attempts += getattr(exc, "attempts", 1)
            reply.error_message = str(exc)[:2000]
            if getattr(exc, "deferred", False):
                logger.warning("reply delivery deferred", extra={"error": str(exc), "attempts": reply.attempts})
                reply.error_code, reply.lease_until = "delivery_deferred", timezone.now()  # recovery's now
            else:
                logger.error("reply delivery failed", extra={"error": str(exc), "attempts": reply.attempts})
                reply.status, reply.error_code, reply.lease_until = Status.FAILED, "delivery_failed", None
            through_outage(lambda: reply.save(update_fields=[
                "status", "error_code", "error_message", "attempts", "lease_until", "updated_at"]))
            if then_hand_over:
                _hand_over_after_delivery(inbound)
            return
        reply.status, reply.lease_until = Status.SENT, None
        if then_hand_over:
            _hand_over_after_delivery(inbound, sent=reply)
        else:
            through_outage(lambda: reply.save(update_fields=["status", "attempts", "lease_until", "updated_at"]))


def deliver_pending(reply_id) -> bool:
    """Deliver a stored reply whose delivery lease ran out (its deliverer died, or the gateway's
    means failed): claim it with one conditional UPDATE, so one deliverer at a time; False if it
    is sent, failed, or another deliverer holds it."""
    now = timezone.now()
    claimed = Message.objects.filter(
        Q(lease_until__isnull=True) | Q(lease_until__lt=now),
        pk=reply_id, direction=Direction.OUTBOUND, status=Status.PENDING, reply_to__isnull=False,
    ).update(lease_until=now + timedelta(seconds=settings.GATEWAY_AGENT_LEASE_SECONDS))
    if not claimed:
        return False
    from apps.connectors.models import channel_by_id

    reply = Message.objects.select_related("reply_to").get(pk=reply_id)
    inbound = reply.reply_to
    inbound.channel = channel_by_id(inbound.channel_id) or inbound.channel
    logger.warning("delivering a reply left pending", extra={"message_id": str(inbound.pk)})
    deliver(reply, inbound=inbound, then_hand_over=True)
    return True


def _hand_over_after_delivery(inbound: Message, *, sent: Message | None = None) -> None:
    """hand_over once the reply went out: the message is answered whatever happens here, so a bug
    is logged rather than taken for a failed run (a database outage still propagates: it is retried)."""
    try:
        hand_over(inbound, sent=sent)
    except Exception as exc:
        if is_database_outage(exc):
            raise
        logger.exception("hand-over after delivery failed")


def fail_message(message: Message, exc: llm.LLMError) -> None:
    """Mark the message failed and tell the sender, so a failure is never silence."""
    Message.objects.filter(pk=message.pk).update(
        status=Status.FAILED, lease_until=None, error_code=exc.code, error_message=exc.message[:2000]
    )
    logger.warning("agent run failed", extra={"error_code": exc.code, "error": exc.message})
    error = getattr(exc, "gateway_error", None)  # e.g. a quota refusal, told as such
    message.channel.connector.send_error(
        message, error or AgentFailed("The assistant could not answer right now. Please try again.")
    )


def record_llm_call(message: Message, *, model, result: llm.LLMResult | None = None,
                    error: llm.LLMError | None = None, attempt: int = 1, usage: Statement | None = None,
                    unsettled=None) -> LLMCall:
    """The LLMCall row of one attempt; ``usage`` (the day's usage upsert) is written with it, atomically,
    and so is ``unsettled`` (an UnsettledUsage row: the call's settle did not reach the ledger)."""
    agent = message.agent
    fields = dict(
        message=message, conversation_id=message.conversation_id, user_id=message.sender_id,
        channel_id=message.channel_id, agent=agent, model=model.name,
        provider=model.provider.slug, attempt=attempt,
        api_key_id=message.api_key_id, request_id=message.request_id,
    )
    if result is not None:
        fields.update(
            model=(result.model or model.name)[:LLMCall._meta.get_field("model").max_length], status=LLMCall.Status.OK,
            prompt_tokens=result.prompt_tokens, completion_tokens=result.completion_tokens,
            total_tokens=result.total_tokens, latency_ms=result.latency_ms, ttft_ms=result.ttft_ms,
            cost=model.cost(result.prompt_tokens, result.completion_tokens),
        )
    else:
        fields.update(status=LLMCall.Status.ERROR, error=str(error)[:2000])
    call = LLMCall(**fields)
    if unsettled is not None and usage is not None:  # rare: the ledger's store failed at settle
        with transaction.atomic():
            write_together(usage, call)
            unsettled.llm_call = call
            unsettled.save(force_insert=True)
    elif usage is not None:
        write_together(usage, call)
    else:
        call.save(force_insert=True)
    llm_call_observed(call)
    return call

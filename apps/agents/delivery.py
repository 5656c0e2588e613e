"""Delivering an agent run's outcome: its reply (stored, then sent) or its failure, then starting
the conversation's next waiting message.

Delivery is claimed the way a message is: the run that stores a reply holds its delivery lease
from the insert on; anyone else (recovery, after that lease ran out) claims it with a conditional
UPDATE (``deliver_pending``). A reply is sent by one holder at a time and marked sent once.
"""
from __future__ import annotations

import logging
from datetime import timedelta

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models import Q
from django.utils import timezone

from apps.conversations.models import FINISH_REASON_KEY, PERSONS_REPLY, Direction, Message, Status
from apps.core.errors import AgentFailed, ChannelMisconfigured
from apps.core.http import ConnectorError, send_with_retries
from gateway_project.db import Update, is_database_outage, stored, through_outage, update_then_fetch, write_together
from gateway_project.plain import is_plain

from . import hooks, leases, llm
from .claims import still_claimed
from .dispatch import enqueue_agent_run, process_stopping
from .models import written_without_a_deleted_agent

logger = logging.getLogger(__name__)

_MESSAGES = Message._meta.db_table


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
        control={FINISH_REASON_KEY: result.finish_reason} if result.finish_reason not in (None, "stop") else {},
    )
    # Stored with this run's delivery lease: nobody else delivers it while this run is alive.
    reply.lease_until = now + timedelta(seconds=settings.GATEWAY_AGENT_LEASE_SECONDS)
    answered = {"status": Status.ANSWERED, "lease_until": None, "error_code": "", "error_message": ""}
    # Only while the message is still this run's: a person who took the conversation over may
    # have answered it meanwhile (apps.routing handoff_reply), and it keeps that one answer.
    # A reply whose agent was deleted meanwhile is written without it: still an agent's (it names its model).
    try:
        written = written_without_a_deleted_agent(reply, lambda: write_together(
            Update(Message, message.pk, answered, only_if=still_claimed(message)), reply))
    except IntegrityError:  # another reply to it went in first
        written = False
    if written:
        return reply
    if (stored := _stored_by_this_run(message)) is not None:
        # This run's write went in but the connection broke before PostgreSQL said so, and
        # through_outage wrote again: the stored reply is this run's, still to be delivered.
        logger.warning("reply already stored by this run before the connection broke; delivering it")
        return stored
    logger.warning("the message is no longer this run's (answered by a person who took over, or by another "
                   "run after this one's lease ran out); this run's reply is dropped")
    return None


def _stored_by_this_run(message: Message) -> Message | None:
    """The undelivered reply to ``message`` if this run stored it: the message is answered and no
    run claimed it since this one (its attempts are still this run's)."""
    return Message.objects.filter(
        reply_to=message, direction=Direction.OUTBOUND, status=Status.PENDING,
        reply_to__status=Status.ANSWERED, reply_to__attempts=message.attempts,
    ).exclude(PERSONS_REPLY).first()


def deliver(reply: Message, *, inbound: Message, then_start_next: bool = False) -> None:
    """Hand the reply to the channel's connector (retrying transient errors) and record the outcome
    on the reply (never on ``inbound``, which is answered whatever happens to its delivery).

    The caller holds the reply's delivery lease (``save_reply`` stored it so, or ``deliver_pending``
    claimed it); it is renewed while the send goes on. Outcomes: sent; failed (the platform refused,
    or kept failing through every retry); or still pending with the lease given back, when the
    gateway's own means failed, for recovery to deliver later. ``then_start_next``: then
    start_next_in_conversation(inbound), in the same statement as the outcome if it was sent.
    """
    connector = inbound.channel.connector

    def send() -> None:
        try:
            connector.send(reply, inbound=inbound)
        except (ConnectorError, ChannelMisconfigured):
            raise
        except Exception as exc:
            # Not the platform's answer but the gateway's own means failing (e.g. redis.ConnectionError
            # from the channel layer): retried like any transient error, then left for recovery.
            error = ConnectorError(f"delivery means unavailable: {type(exc).__name__}: {exc}",
                                   permanent=process_stopping())  # exiting: left for the next start now
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
            if then_start_next:
                _start_next_after_delivery(inbound)
            return
        reply.status, reply.lease_until = Status.SENT, None
        if then_start_next:
            _start_next_after_delivery(inbound, sent=reply)
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
    reply = Message.objects.select_related("reply_to").get(pk=reply_id)
    inbound = reply.reply_to
    inbound.channel = hooks.channel_by_id(inbound.channel_id) or inbound.channel
    logger.warning("delivering a reply left pending", extra={"message_id": str(inbound.pk)})
    deliver(reply, inbound=inbound, then_start_next=True)
    return True


def _start_next_after_delivery(inbound: Message, *, sent: Message | None = None) -> None:
    """start_next_in_conversation once the reply went out: the message is answered whatever
    happens here, so a bug is logged rather than taken for a failed run (a database outage still
    propagates: it is retried)."""
    try:
        start_next_in_conversation(inbound, sent=sent)
    except Exception as exc:
        if is_database_outage(exc):
            raise
        logger.exception("starting the conversation's next message failed")


def fail_message(message: Message, exc: llm.LLMError) -> None:
    """Mark the message failed and tell the sender, so a failure is never silence; unless it was
    answered meanwhile (a person who took the conversation over), when its answer stands."""
    if not Message.objects.filter(
        pk=message.pk, status__in=[Status.ACCEPTED, Status.PROCESSING], attempts=message.attempts,  # not claimed
    ).update(status=Status.FAILED, lease_until=None, error_code=exc.code, error_message=exc.message[:2000]):
        logger.warning("the message is no longer this run's (answered by a person who took over, or claimed by "
                       "another run after this one's lease ran out); its failure is not told",
                       extra={"error_code": exc.code})
        return
    logger.warning("agent run failed", extra={"error_code": exc.code, "error": exc.message})
    error = getattr(exc, "gateway_error", None)  # e.g. a quota refusal, told as such
    # AgentFailed's own text: a resend reads the failure back and is told the same (apis.py).
    message.channel.connector.send_error(message, error or AgentFailed())


def start_next_in_conversation(message: Message, *, sent: Message | None = None) -> None:
    """Queue the conversation's next waiting message now that this one is done (not to be confused
    with a handoff, apps.routing: a human taking the conversation over), rather than
    leaving it to find out at its next re-check (a burst from one sender drains at model speed).

    ``sent``: the reply just delivered, recorded as sent by the same statement that looks for the
    next message (every run asks: one prepared statement, not an ORM query).
    """
    if sent is not None:
        sent.updated_at = timezone.now()
    if is_plain("raw_sql"):
        def record_and_find():
            if sent is not None:
                Message.objects.filter(pk=sent.pk).update(
                    status=sent.status, attempts=sent.attempts, lease_until=None, updated_at=sent.updated_at)
            return Message.objects.filter(
                conversation_id=message.conversation_id, direction=Direction.INBOUND, status=Status.ACCEPTED,
                created_at__gt=message.created_at).order_by("created_at").values_list("id", flat=True).first()

        waiting = record_and_find() if sent is None else through_outage(record_and_find)
    else:
        params = [stored(Message, "conversation", message.conversation_id), Direction.INBOUND, Status.ACCEPTED,
                  stored(Message, "created_at", message.created_at)]
        if sent is None:
            with connection.cursor() as cursor:
                cursor.execute(NEXT_WAITING_SQL, params)
                row = cursor.fetchone()
        else:
            recorded = Update(Message, sent.pk, {"status": sent.status, "attempts": sent.attempts,
                                                 "lease_until": None, "updated_at": sent.updated_at})
            row = through_outage(lambda: update_then_fetch(recorded, NEXT_WAITING_SQL, params))  # it was sent
        waiting = Message._meta.pk.to_python(row[0]) if row is not None else None
    if waiting is not None:
        transaction.on_commit(lambda: enqueue_agent_run(waiting))


NEXT_WAITING_SQL = f"""
SELECT id FROM {_MESSAGES} WHERE conversation_id = %s AND direction = %s AND status = %s AND created_at > %s
ORDER BY created_at LIMIT 1
"""

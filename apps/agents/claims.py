"""Claiming an inbound message for an agent run, in the conversation's order.

A message is claimed with one conditional UPDATE (only an accepted message, or one whose previous
worker's lease ran out, can be claimed); the claim's lease is renewed while the run is alive
(``leases.kept``), so only a dead run's message is taken over. Messages of one conversation are
answered in arrival order: a later one waits (``WaitingForEarlier``) while an earlier one is in flight.
"""
from __future__ import annotations

import logging
from datetime import timedelta

from django.conf import settings
from django.db import connection
from django.db.models import Exists, F, OuterRef, Q
from django.utils import timezone

from apps.conversations.models import Direction, Message, Status
from apps.identities.models import user_by_id
from gateway_project.db import stored
from gateway_project.plain import is_plain

from . import hooks
from .models import agent_by_id

logger = logging.getLogger(__name__)


def still_claimed(message: Message) -> dict:
    """Filter values that hold while ``message`` is still the claim of the run that has it (a person
    who took the conversation over, or a run after this one's lease ran out, changes them)."""
    return {"status": Status.PROCESSING, "attempts": message.attempts}


class WaitingForEarlier(Exception):
    """An earlier message of the same conversation is still being answered: try again shortly."""


def claim(message_id, *, ignore_order: bool = False) -> Message | None:
    """Take the message for this worker, or None if it is answered or another worker holds it.

    Messages of one conversation are answered in arrival order: the claim fails with
    WaitingForEarlier while an earlier inbound message is accepted or leased, or an earlier
    message's reply is being delivered by a live deliverer (a delivery that died or was deferred
    holds nothing up: its lease is out).

    One statement claims and reads the message (UPDATE … RETURNING, with whether a human has the
    conversation; ``GATEWAY_PLAIN=raw_sql``: the ORM's update, then a read); its channel, agent and
    sender come from the per-process configuration cache. The statement costs a message 28% less CPU
    than the ORM's way (bench/README.md, same-run A/B).
    """
    now = timezone.now()
    if is_plain("raw_sql"):
        message = _claim_orm(message_id, now, ignore_order=ignore_order)
    else:
        lease_until = stored(Message, "lease_until", now + timedelta(seconds=settings.GATEWAY_AGENT_LEASE_SECONDS))
        claimable, params = _claimable(message_id, now, ignore_order=ignore_order)
        claimed = list(Message.objects.raw(CLAIM_SQL.format(claimable=claimable),
                                           [Status.PROCESSING, lease_until, *params]))
        message = claimed[0] if claimed else None
    if message is None:
        if not ignore_order and _waits_for_earlier(message_id, now):
            logger.info("waiting for an earlier message of the conversation")
            hooks.handoff().announce_if_held(message_id)  # held for a human: the staff inbox shows it
            raise WaitingForEarlier()
        logger.info("message not claimable (answered or in progress)")
        return None
    # Copies of rows kept per process; the conversation loads on first use (few runs need it).
    for field, by_id in (("channel", hooks.channel_by_id), ("agent", agent_by_id), ("sender", user_by_id)):
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


def _claim_orm(message_id, now, *, ignore_order: bool) -> Message | None:
    """The claim the ORM's way: a conditional UPDATE, then the claimed row read back."""
    lease_until = now + timedelta(seconds=settings.GATEWAY_AGENT_LEASE_SECONDS)
    claimed = _claimable_orm(message_id, now, ignore_order=ignore_order).update(
        status=Status.PROCESSING, attempts=F("attempts") + 1, lease_until=lease_until)
    if not claimed:
        return None
    return Message.objects.annotate(in_handoff=hooks.handoff().in_open_handoff()).filter(pk=message_id).first()


def _claimable_orm(message_id, now, *, ignore_order: bool = False, in_order: bool = True):
    """The messages ``_claimable`` selects, as a queryset."""
    messages = Message.objects.filter(
        Q(status=Status.ACCEPTED) | Q(status=Status.PROCESSING, lease_until__lt=now),
        pk=message_id, direction=Direction.INBOUND)
    if ignore_order:
        return messages
    earlier = Message.objects.filter(
        Q(status=Status.ACCEPTED) | Q(status=Status.PROCESSING, lease_until__gte=now),
        conversation_id=OuterRef("conversation_id"), direction=Direction.INBOUND,
        created_at__lt=OuterRef("created_at"))
    delivering = Message.objects.filter(
        conversation_id=OuterRef("conversation_id"), direction=Direction.OUTBOUND, status=Status.PENDING,
        lease_until__gte=now, reply_to__created_at__lt=OuterRef("created_at"))
    in_order_q = ~Exists(earlier) & ~Exists(delivering)
    return messages.filter(in_order_q if in_order else ~in_order_q)


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


def wait_lease() -> timedelta:
    """How long a message waiting its turn is left to its task chain: the longest pause before the
    next re-check, plus a claim's lease."""
    return timedelta(seconds=settings.GATEWAY_ORDER_RETRY_MAX_DELAY_SECONDS + settings.GATEWAY_AGENT_LEASE_SECONDS)


def _waits_for_earlier(message_id, now) -> bool:
    """Whether the unclaimed message is claimable but for an earlier one of its conversation.

    If so, the message gets a wait lease (until its task's next re-check, at the longest, plus a
    claim's lease): recovery leaves a waiting message to the one task chain already waiting on it.
    """
    if is_plain("raw_sql"):
        waiting = _claimable_orm(message_id, now, in_order=False)
        return waiting.update(lease_until=now + wait_lease()) > 0
    condition, params = _claimable(message_id, now, in_order=False)
    until = stored(Message, "lease_until", now + wait_lease())
    with connection.cursor() as cursor:
        cursor.execute(f"UPDATE {_MESSAGES} SET lease_until = %s WHERE {condition}", [until, *params])
        return cursor.rowcount > 0


def release_claim(message_id, attempt: int, *, waiting: bool = False) -> int:
    """Give back the claim of a run the database failed under, so the retry can claim it again.

    Only the claim that run made is released (``attempts`` is still ``attempt``): a message
    answered meanwhile, or claimed again after its lease ran out, is left as it is. ``waiting``:
    the run's task chain tries again shortly (a budget held by calls in flight), so the message
    keeps a wait lease, and recovery leaves it to that chain as it does a message waiting its turn.
    """
    lease_until = timezone.now() + wait_lease() if waiting else None
    return Message.objects.filter(
        pk=message_id, direction=Direction.INBOUND, status=Status.PROCESSING, attempts=attempt
    ).update(status=Status.ACCEPTED, lease_until=lease_until)

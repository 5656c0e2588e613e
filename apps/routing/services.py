"""Human handoff: staff take a conversation over, answer as themselves, and hand it back.

While a handoff is open the agent run does not answer (see ``handoff_open`` in the runtime):
inbound messages wait for the human. A human reply is an outbound Message whose ``sender`` is the
staff member, delivered on the conversation's channel by its connector like an agent reply.
"""
from __future__ import annotations

import logging

from django.db import IntegrityError, transaction
from django.utils import timezone

from apps.conversations.errors import BadRequest, GatewayError
from apps.conversations.models import Direction, Message, Status
from apps.logs.services import audit

from .models import Handoff

logger = logging.getLogger(__name__)


class HandoffConflict(GatewayError):
    code = "handoff_conflict"
    status = 409
    default_message = "Another staff member is handling this conversation."


def handoff_open(conversation_id) -> Handoff | None:
    return Handoff.objects.select_related("staff").filter(
        conversation_id=conversation_id, ended_at__isnull=True
    ).first()


def handoff_start(*, conversation, staff) -> Handoff:
    """Take the conversation over (idempotent for the same staff member)."""
    current = handoff_open(conversation.pk)
    if current is not None:
        if current.staff_id == staff.pk:
            return current
        raise HandoffConflict(f"{current.staff} is handling this conversation.")
    try:
        with transaction.atomic():
            handoff = Handoff.objects.create(conversation=conversation, staff=staff)
    except IntegrityError:
        raise HandoffConflict() from None  # someone else took it a moment ago
    audit(action="handoff.started", actor=staff, target=conversation)
    return handoff


def handoff_end(*, conversation, staff) -> None:
    """Hand the conversation back to its agent. Messages held for the human and left unanswered
    are queued for the agent again."""
    from apps.agents.dispatch import enqueue_agent_run

    with transaction.atomic():
        updated = Handoff.objects.filter(conversation=conversation, ended_at__isnull=True).update(
            ended_at=timezone.now(), ended_by=staff
        )
        if not updated:
            return
        held = list(Message.objects.filter(
            conversation=conversation, direction=Direction.INBOUND, status=Status.ACCEPTED
        ).values_list("pk", flat=True))
        for message_id in held:
            transaction.on_commit(lambda message_id=message_id: enqueue_agent_run(message_id))
    audit(action="handoff.ended", actor=staff, target=conversation, requeued=len(held))


def hold_for_handoff(message) -> bool:
    """In the agent run: True (and the message is put back, unanswered) if a human has the
    conversation, so the agent stays quiet."""
    held = getattr(message, "in_handoff", None)  # annotated by the agent run's claim
    if held is None:
        held = handoff_open(message.conversation_id) is not None
    if not held:
        return False
    Message.objects.filter(pk=message.pk).update(status=Status.ACCEPTED, lease_until=None)
    message.status, message.lease_until = Status.ACCEPTED, None
    logger.info("conversation in human handoff; the agent does not answer")
    return True


def handoff_reply(*, conversation, staff, text: str) -> Message:
    """Send ``text`` as ``staff`` on the conversation's channel; returns the stored reply.

    The reply answers the latest inbound message; inbound messages held for the human are marked
    answered. Requires an open handoff by this staff member.
    """
    from apps.agents.runtime import deliver

    text = (text or "").strip()
    if not text:
        raise BadRequest("The reply is empty.")
    current = handoff_open(conversation.pk)
    if current is None or current.staff_id != staff.pk:
        raise HandoffConflict("Take the conversation over before replying.")
    inbound = (
        Message.objects.select_related("channel", "conversation")
        .filter(conversation=conversation, direction=Direction.INBOUND)
        .order_by("-created_at").first()
    )
    if inbound is None:
        raise BadRequest("The conversation has no message to answer yet.")
    with transaction.atomic():
        reply = Message.objects.create(
            conversation=conversation, channel_id=inbound.channel_id, direction=Direction.OUTBOUND,
            status=Status.PENDING, reply_to=inbound, sender=staff, text=text,
        )
        Message.objects.filter(
            conversation=conversation, direction=Direction.INBOUND, status__in=[Status.ACCEPTED, Status.PROCESSING],
            created_at__lte=inbound.created_at,
        ).update(status=Status.ANSWERED, lease_until=None)
    deliver(reply, inbound=inbound)
    audit(action="handoff.replied", actor=staff, target=conversation, message_id=str(reply.pk))
    return reply

"""Human handoff: staff take a conversation over, answer as themselves, and hand it back.

While a handoff is open the agent run does not answer (``hold_for_handoff``, which the run calls
through ``apps.agents.hooks``: ``RUN_HANDOFF``, registered by ``RoutingConfig.ready()``): inbound
messages wait for the human. An open handoff without a staff member is a conversation
waiting for a human (the customer asked for one, ``HANDOFF_PHRASES``): it shows in the staff inbox
(``/console/``) until someone takes it over. Every change is published to the inbox group.
A human reply is an outbound Message whose ``sender`` is the staff member, delivered on the
conversation's channel by its connector like an agent reply.
"""
from __future__ import annotations

import logging
import uuid

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Exists, OuterRef
from django.utils import timezone

from apps.agents.claims import still_claimed
from apps.agents.delivery import deliver
from apps.agents.dispatch import enqueue_agent_run
from apps.conversations.models import ANSWERED_BY_KEY, FOLLOW_UP_KEY, Direction, Message, Status
from apps.conversations.normalized import storable_text
from apps.conversations.realtime import publish
from apps.core.errors import BadRequest, GatewayError
from apps.logs.services import audit

from .models import Handoff

logger = logging.getLogger(__name__)

# A customer message that is exactly one of these (case and punctuation aside) asks for a person.
HANDOFF_PHRASES = ("/human", "human", "human please", "talk to a human", "speak to a human", "a person please",
                   "talk to a person", "agent please", "real person")
INBOX_GROUP = "console.inbox"


def notify_inbox(conversation, kind: str) -> None:
    """Tell the open staff inboxes that this conversation changed (they re-read it over HTTP,
    where the channel permission is checked). Never fails the caller: the inbox is a view."""
    event = {"type": "inbox.changed", "kind": kind, "conversation_id": str(conversation.pk),
             "channel_id": conversation.channel_id}

    def send() -> None:
        try:
            publish(INBOX_GROUP, event)
        except Exception:  # the channel layer is down: the inbox catches up on its next read
            logger.warning("could not notify the staff inbox", exc_info=True)

    transaction.on_commit(send)


def announce_if_held(message_id) -> None:
    """Called by the agent run when a message waits behind an earlier one: if a human has the
    conversation, the message is for them, so the inbox hears of it (the run never claims it)."""
    message = Message.objects.select_related("conversation").filter(pk=message_id).first()
    if message is not None and handoff_open(message.conversation_id) is not None:
        notify_inbox(message.conversation, "message")


def wants_human(text: str) -> bool:
    cleaned = " ".join("".join(c for c in (text or "").lower() if c.isalnum() or c in " /").split())
    return cleaned in HANDOFF_PHRASES


def handoff_request(message) -> Handoff | None:
    """The customer asked for a person: open a handoff without staff (waiting in the inbox)."""
    try:
        with transaction.atomic():
            handoff = Handoff.objects.create(conversation_id=message.conversation_id, staff=None)
    except IntegrityError:
        return None  # already waiting or handled
    audit(action="handoff.requested", actor=message.sender, target=message.conversation,
          message_id=str(message.pk))
    return handoff


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
        if current.staff_id is not None or not Handoff.objects.filter(
                pk=current.pk, staff__isnull=True, ended_at__isnull=True).update(staff=staff):
            raise HandoffConflict(f"{current.staff or 'Someone'} is handling this conversation.")
        current.staff = staff  # a waiting conversation, claimed
        audit(action="handoff.started", actor=staff, target=conversation, requested=True)
        notify_inbox(conversation, "started")
        return current
    try:
        with transaction.atomic():
            handoff = Handoff.objects.create(conversation=conversation, staff=staff)
    except IntegrityError:
        raise HandoffConflict() from None  # someone else took it a moment ago
    audit(action="handoff.started", actor=staff, target=conversation)
    notify_inbox(conversation, "started")
    return handoff


def handoff_end(*, conversation, staff) -> None:
    """Hand the conversation back to its agent. Messages held for the human and left unanswered
    are queued for the agent again."""
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
    notify_inbox(conversation, "ended")


def hold_for_handoff(message) -> bool:
    """In the agent run: True (and the message is put back, unanswered) if a human has the
    conversation, so the agent stays quiet."""
    held = getattr(message, "in_handoff", None)  # annotated by the agent run's claim
    if held is None:
        held = handoff_open(message.conversation_id) is not None
    if not held and not (message.direction == Direction.INBOUND and wants_human(message.text)
                         and handoff_request(message) is not None):
        return False
    # Put back only while still this run's: a person's reply may have answered it since the claim.
    Message.objects.filter(pk=message.pk, **still_claimed(message)).update(status=Status.ACCEPTED, lease_until=None)
    message.status, message.lease_until = Status.ACCEPTED, None
    logger.info("conversation in human handoff; the agent does not answer")
    notify_inbox(message.conversation, "message")
    return True


HELD = [Status.ACCEPTED, Status.PROCESSING]  # not answered yet: what a person's reply answers


def handoff_reply(*, conversation, staff, text: str) -> Message:
    """Send ``text`` as ``staff`` on the conversation's channel; returns the stored reply.

    The reply answers every inbound message not answered yet: those held for the human and any
    whose agent run is still under way (that run then drops its reply: ``save_reply`` stores one
    only while the message is still its own). It is the reply to the latest of them, and each
    earlier one records it (``control["answered_by"]``). Requests waiting for any of them are told
    it. With none left to answer, it is the reply to the latest message; if the agent answered
    that one, the reply follows its answer up (``Message.follows_up``) and is not told as its
    answer. Requires an open handoff by this staff member.
    """
    text = (text or "").strip()
    if not text:
        raise BadRequest("The reply is empty.")
    if not storable_text(text):  # PostgreSQL would refuse the insert: a 500
        raise BadRequest("Text with NUL characters or unpaired surrogates cannot be stored.")
    if len(text) > settings.GATEWAY_MAX_MESSAGE_CHARS:  # the bound every channel's messages have
        raise BadRequest(f"The reply is longer than {settings.GATEWAY_MAX_MESSAGE_CHARS} characters.")
    current = handoff_open(conversation.pk)
    if current is None or current.staff_id != staff.pk:
        raise HandoffConflict("Take the conversation over before replying.")
    latest = (
        Message.objects.select_related("channel", "conversation")
        .filter(conversation=conversation, direction=Direction.INBOUND)
        .order_by("-created_at").first()
    )
    if latest is None:
        raise BadRequest("The conversation has no message to answer yet.")
    held = Message.objects.filter(
        conversation=conversation, direction=Direction.INBOUND, status__in=HELD, created_at__lte=latest.created_at,
    ).order_by("created_at")
    reply_id = uuid.uuid4()
    with transaction.atomic():
        # Locked first: a run storing its own reply to one of them waits, then finds it answered.
        answered = [m for m in held.select_for_update() if Message.objects.filter(pk=m.pk, status__in=HELD).update(
            status=Status.ANSWERED, lease_until=None, control={**m.control, ANSWERED_BY_KEY: str(reply_id)})]
        inbound = answered[-1] if answered else latest
        inbound.channel = latest.channel
        follow_up = not answered and Message.objects.filter(pk=latest.pk, status=Status.ANSWERED).exists()
        reply = Message.objects.create(
            id=reply_id, conversation=conversation, channel_id=latest.channel_id, direction=Direction.OUTBOUND,
            status=Status.PENDING, reply_to=inbound, sender=staff, text=text,
            control={FOLLOW_UP_KEY: True} if follow_up else {},
        )
    deliver(reply, inbound=inbound)
    for message in answered[:-1]:  # each earlier one is told the same answer (a waiting request, a stream)
        try:
            latest.channel.connector.tell_answered(message, reply)
        except Exception:  # e.g. the channel layer is down: they time out, and a resend reads the reply
            logger.warning("could not tell an earlier held message the human reply", exc_info=True)
    audit(action="handoff.replied", actor=staff, target=conversation, message_id=str(reply.pk))
    notify_inbox(conversation, "replied")
    return reply


def in_open_handoff() -> Exists:
    """A filter on messages: a human has their conversation (recovery leaves them alone)."""
    return Exists(Handoff.objects.filter(conversation_id=OuterRef("conversation_id"), ended_at__isnull=True))


class RunHandoff:
    """The handoff as the agent run asks for it (``apps.agents.hooks.Handoff``); agents sits below
    routing, so RoutingConfig.ready() registers ``RUN_HANDOFF`` rather than the run importing this."""

    hold = staticmethod(hold_for_handoff)
    announce_if_held = staticmethod(announce_if_held)
    in_open_handoff = staticmethod(in_open_handoff)


RUN_HANDOFF = RunHandoff()

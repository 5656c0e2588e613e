"""The inbound pipeline: every channel's message goes through these steps, in this order.

    ip rules → storable → dedupe → identify → authorize → limit → route → authorize agent → persist → enqueue

``accept()`` reads top to bottom as that list. Each step either returns what the next one needs or
raises a ``GatewayError`` (see errors.py) that the entry point turns into its wire form. Nothing
here calls a model or waits for one: the agent runs later in a Celery worker.
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass

from django.core.exceptions import ValidationError
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from apps.agents.dispatch import enqueue_agent_run
from apps.agents.models import agent_by_id
from apps.connectors.models import Channel
from apps.core.errors import ChannelDisabled, NotFound
from apps.identities.access import check_agent_access, check_channel_access
from apps.identities.services import identify_sender
from apps.logs.structured import request_id_var
from apps.quotas.iprules import check_ip_rules
from apps.quotas.limits import check_limits, count_requests, rate_checks
from apps.routing.router import REQUESTED_AGENT_KEY, route_message
from gateway_project.db import Update, stored, write_together
from gateway_project.plain import is_plain

from .models import Conversation, Direction, Message, Status
from .normalized import CLIENT_KEYED_KINDS, NormalizedMessage, metadata_vouched_for

logger = logging.getLogger(__name__)


class ThreadStarted(Exception):
    """The message would start its thread's conversation, and another message just did."""

    def __init__(self, conversation: Conversation):
        super().__init__("the thread's conversation was started meanwhile")
        self.conversation = conversation


@dataclass
class Accepted:
    message: Message
    conversation: Conversation
    duplicate: bool = False


def accept(
    msg: NormalizedMessage, *, channel: Channel, principal=None, api_key=None, client_ip: str | None = None
) -> Accepted:
    """Take one inbound message through every step. Raises GatewayError when refused.

    ``principal`` is the gateway user when the entry point already knows it (API key owner,
    logged-in web chat session, visitor); otherwise the sender is looked up by channel identity.
    ``api_key`` is the ApiKey row that authenticated the request, if any; ``client_ip`` the
    caller's address as the entry point determined it (for limits and IP rules).
    A repeated delivery (same channel and external_id) returns the original message, unqueued.
    """
    check_ip_rules(client_ip, channel=channel)
    msg.check_storable()
    if (original := dedupe(msg, channel)) is not None:
        if channel.kind in CLIENT_KEYED_KINDS:
            vet_resend(original, channel=channel, principal=principal, api_key=api_key, client_ip=client_ip)
        return original
    user = identify_sender(msg, channel=channel, principal=principal, client_ip=client_ip)
    authorize(user, channel, api_key=api_key, client_ip=client_ip)
    check_limits(user=user, channel=channel, api_key=api_key, client_ip=client_ip)
    msg.control["thread"] = conversation_thread(msg, channel=channel, user=user, api_key=api_key)
    conversation = find_conversation(msg, channel=channel, user=user)
    agent = route_message(msg, channel=channel, user=user, conversation=conversation)
    requested = msg.control.get(REQUESTED_AGENT_KEY)
    check_agent_access(user=user, agent=agent, api_key=api_key, client_ip=client_ip, requested=requested)
    try:
        accepted = persist(msg, channel=channel, user=user, conversation=conversation, agent=agent, api_key=api_key)
    except ThreadStarted as started:  # another first message of the thread started its conversation
        agent = route_message(msg, channel=channel, user=user, conversation=started.conversation)
        check_agent_access(user=user, agent=agent, api_key=api_key, client_ip=client_ip, requested=requested)
        accepted = persist(msg, channel=channel, user=user, conversation=started.conversation, agent=agent,
                           api_key=api_key)
    if not accepted.duplicate:
        transaction.on_commit(lambda: enqueue_agent_run(accepted.message.id))
    return accepted


def dedupe(msg: NormalizedMessage, channel: Channel) -> Accepted | None:
    """The message already accepted under this (channel, external_id), if any."""
    if not msg.external_id:
        return None
    # Asked of every webhook event: one prepared statement for the usual answer, "not seen" (the
    # ORM spent more time building the query than PostgreSQL answering it); the rows for a duplicate.
    if is_plain("raw_sql"):
        original = Message.objects.select_related("conversation").filter(
            channel=channel, external_id=msg.external_id, direction=Direction.INBOUND).first()
        if original is None:
            return None
    else:
        with connection.cursor() as cursor:
            cursor.execute(SEEN_SQL, [channel.pk, msg.external_id, Direction.INBOUND])
            row = cursor.fetchone()
        if row is None:
            return None
        original = Message.objects.select_related("conversation").get(pk=row[0])
    logger.info("duplicate delivery", extra={"external_id": msg.external_id})
    return Accepted(message=original, conversation=original.conversation, duplicate=True)


def vet_resend(original: Accepted, *, channel: Channel, principal, api_key=None, client_ip: str | None = None) -> None:
    """A client's resend (the same Idempotency-Key or web chat client_id): the sender and the key
    it comes with must still reach the channel and the message's agent, and it counts against the
    request rates like any request. Not the budgets: the message is already accepted, and the
    resend only reads its outcome. (A platform's redelivery of an event is not a client's request:
    it is not vetted so.)"""
    user = principal or original.message.sender
    check_channel_access(user=user, channel=channel, api_key=api_key, client_ip=client_ip)
    count_requests(rate_checks(user=user, channel=channel, api_key=api_key, client_ip=client_ip), channel=channel)
    if original.message.agent_id is not None and (agent := agent_by_id(original.message.agent_id)) is not None:
        check_agent_access(user=user, agent=agent, api_key=api_key, client_ip=client_ip)


SEEN_SQL = f"SELECT id FROM {Message._meta.db_table} WHERE channel_id = %s AND external_id = %s AND direction = %s"


def authorize(user, channel: Channel, *, api_key=None, client_ip: str | None = None) -> None:
    """The sender may use this channel at all: not blocked, role or object permission, API key
    scope (agent and tool rights are checked later). Refusals are audited."""
    if not channel.enabled:
        raise ChannelDisabled()
    check_channel_access(user=user, channel=channel, api_key=api_key, client_ip=client_ip)


THREAD_KEY_MAX_CHARS = 255  # Conversation.external_thread_id


def conversation_thread(msg: NormalizedMessage, *, channel: Channel, user, api_key=None) -> str:
    """The thread key the message's conversation is found and filed under ('' for none).

    A platform's thread (a Slack thread, a WeCom chat, a CRM thread), as the connector read it from
    a payload whose signature it checked, is one conversation for everybody in it: a group
    conversation. A thread id a client chose (``metadata.thread_id`` on the API) belongs to that
    client: it is prefixed with the API key (or, without one, the user), so the same id sent by
    another client is another thread and can neither join nor squat this one.
    """
    thread = msg.metadata.get("thread_id")
    if isinstance(thread, bool) or not isinstance(thread, str | int) or thread == "":
        return ""
    key = str(thread)
    if not metadata_vouched_for(channel.kind):
        key = f"key:{api_key.pk}:{key}" if api_key is not None else f"user:{user.pk}:{key}"
    if len(key) > THREAD_KEY_MAX_CHARS:
        key = f"{key[:64]}:sha256:{hashlib.sha256(key.encode()).hexdigest()}"
    return key


def find_conversation(msg: NormalizedMessage, *, channel: Channel, user) -> Conversation | None:
    """The conversation the message continues: by id (the sender's own only) or by the thread key
    ``conversation_thread`` put in ``msg.control``."""
    if msg.conversation_id:
        try:
            conversation_id = Conversation._meta.pk.to_python(msg.conversation_id)
        except ValidationError:
            raise NotFound("No such conversation.") from None
        conversation = _conversation("id = %s AND channel_id = %s AND user_id = %s",
                                     [stored(Conversation, "id", conversation_id), channel.pk,
                                      stored(Conversation, "user", user.pk)],
                                     id=conversation_id, channel=channel, user_id=user.pk)
        if conversation is None:
            raise NotFound("No such conversation.")
        return conversation
    thread = msg.control.get("thread")
    if thread:
        return _conversation("channel_id = %s AND external_thread_id = %s", [channel.pk, thread],
                             channel=channel, external_thread_id=thread)
    return None


def _conversation(condition: str, params: list, **lookup) -> Conversation | None:
    """The newest conversation matching ``condition`` (the ORM: ``lookup``), its agent from the
    per-process cache.

    One prepared statement for a lookup every Slack, WeCom and CRM message makes (the ORM's
    select_related spent more time building the query than PostgreSQL answering it)."""
    if is_plain("raw_sql"):
        found = Conversation.objects.filter(**lookup).order_by("-last_message_at").first()
    else:
        found = next(iter(Conversation.objects.raw(
            f"SELECT * FROM {Conversation._meta.db_table} WHERE {condition} ORDER BY last_message_at DESC LIMIT 1",
            params)), None)
    if found is not None and found.agent_id is not None and (agent := agent_by_id(found.agent_id)) is not None:
        found.agent = agent
    return found


def persist(
    msg: NormalizedMessage, *, channel: Channel, user, conversation: Conversation | None, agent, api_key=None
) -> Accepted:
    """Store the inbound message (and a new conversation if needed) in one transaction."""
    if conversation is None:
        conversation = first = Conversation(channel=channel, user=user, agent=agent,
                                            external_thread_id=msg.control.get("thread") or "")
    else:
        updates = {"last_message_at": timezone.now()}
        if conversation.agent_id != agent.id:
            updates["agent"] = agent.pk
        first = Update(Conversation, conversation.pk, updates)
    message = Message(
        id=msg.id,
        conversation=conversation,
        channel=channel,
        direction=Direction.INBOUND,
        status=Status.ACCEPTED,
        sender=user,
        agent=agent,
        external_id=msg.external_id,
        external_user_id=msg.user_id,
        text=msg.message,
        attachments=msg.attachments,
        metadata=msg.metadata,
        control=msg.control,
        request_id=request_id_var.get() or "",
        api_key=api_key,
        raw_payload=msg.raw,
        channel_timestamp=msg.timestamp,
    )
    try:
        # The conversation's insert or update and the message's insert: one statement on PostgreSQL
        # (the update locks the conversation's row until the message is in, as a transaction does).
        write_together(first, message)
    except IntegrityError:
        # Two identical deliveries raced past dedupe(); the first insert won.
        if (original := dedupe(msg, channel)) is not None:
            return original
        # Or two first messages of one thread (one_conversation_per_thread): this one joins.
        if first is conversation and conversation.external_thread_id and (
                started := find_conversation(msg, channel=channel, user=user)) is not None:
            raise ThreadStarted(started) from None
        raise
    msg.principal_id = str(user.pk)
    msg.conversation_id = str(conversation.pk)
    return Accepted(message=message, conversation=conversation)


"""The API channel: ``POST /api/v1/messages`` and ``GET /api/v1/conversations/<id>/messages``."""
from __future__ import annotations

import asyncio
import uuid

from django.conf import settings
from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    inline_serializer,
)
from rest_framework import serializers
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.connectors.base import reply_event
from apps.connectors.models import Channel, channel_by_id, channel_by_slug
from apps.core.client_ip import client_ip_for_request
from apps.core.errors import (
    AgentFailed,
    BadRequest,
    ChannelDisabled,
    NotFound,
    QuotaExceeded,
    ReplyTimeout,
    error_from_event,
)
from apps.identities.permissions import api_key_scope, user_can_use_channel
from gateway_project.db import database_sync_to_async

from .async_api import API_CHANNEL_SLUG, ApiIpRulesMixin, AsyncAPIView
from .models import ANSWERED_BY_KEY, FOLLOW_UP_KEY, PERSONS_REPLY, Conversation, Direction, Message, Status
from .normalized import NormalizedMessage
from .pipeline import Accepted, accept
from .realtime import INBOX_KEY
from .serializers import (
    ConversationMessageSerializer,
    MessageAcceptedSerializer,
    MessageAnsweredSerializer,
    MessageInSerializer,
)
from .waiters import ReplyWaiter

ErrorSerializer = inline_serializer(
    "Error",
    {"error": inline_serializer("ErrorDetail", {
        "code": serializers.CharField(), "message": serializers.CharField(),
        "retry_after": serializers.IntegerField(required=False),
    })},
)


IDEMPOTENCY_KEY_MAX_CHARS = 200  # with the user's id, within the message's external id (255)


def api_channel() -> Channel:
    channel = channel_by_slug(API_CHANNEL_SLUG, kind="api")
    if channel is None:
        raise ChannelDisabled("The API channel is not configured.")
    return channel


def accept_on_api_channel(message: dict, **context) -> Accepted:
    """A message to the API channel through the pipeline: ``message`` holds the normalized
    message's fields but the channel's, ``context`` the pipeline's keywords (principal, api_key,
    client_ip). One call, so an async view crosses to a thread once for all its database work."""
    channel = api_channel()
    normalized = NormalizedMessage(channel=channel.kind, channel_id=channel.slug, **message)
    return accept(normalized, channel=channel, **context)


class MessageCreateApi(AsyncAPIView):
    """Send a message to the agent of the API channel; optionally wait for the reply."""

    @extend_schema(
        request=MessageInSerializer,
        parameters=[OpenApiParameter(
            "Idempotency-Key", location=OpenApiParameter.HEADER, required=False,
            description="Repeat a request with the same key: the message is accepted once.",
        )],
        responses={
            200: MessageAnsweredSerializer, 202: MessageAcceptedSerializer,
            **{code: OpenApiResponse(ErrorSerializer) for code in (400, 401, 403, 404, 413, 415, 429, 502, 503, 504)},
        },
    )
    async def post(self, request):
        data = MessageInSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        fields = data.validated_data
        user = request.user
        idempotency_key = request.headers.get("Idempotency-Key", "")
        if len(idempotency_key) > IDEMPOTENCY_KEY_MAX_CHARS:  # cut, two keys would be one
            raise BadRequest(f"The Idempotency-Key header is limited to {IDEMPOTENCY_KEY_MAX_CHARS} characters.")
        message = dict(
            id=uuid.uuid4(),
            user_id=str(user.pk),
            principal_id=str(user.pk),
            message=fields["message"],
            conversation_id=str(fields["conversation_id"]) if fields.get("conversation_id") else None,
            external_id=f"{user.pk}:{idempotency_key}" if idempotency_key else None,
            metadata=fields.get("metadata") or {},
            raw=request.data,
        )
        context = dict(principal=user, api_key=request.auth, client_ip=client_ip_for_request(request))
        wait = fields.get("wait") or 0
        if not wait:
            accepted = await database_sync_to_async(accept_on_api_channel)(message, **context)
            return Response(_accepted_body(accepted), status=202)
        return await self._accept_and_wait(message, context, wait)

    async def _accept_and_wait(self, message: dict, context: dict, wait: float) -> Response:
        # Listen before the message is enqueued, so a fast reply cannot slip by.
        async with ReplyWaiter(message["id"]) as waiter:
            message["control"] = {INBOX_KEY: waiter.inbox_name}
            accepted = await database_sync_to_async(accept_on_api_channel)(message, **context)
            try:
                if accepted.duplicate:
                    event = await stored_reply_within(accepted.message.id, wait)
                else:
                    event = await waiter.final_event(wait)
            except TimeoutError:
                error = ReplyTimeout()
                return Response(
                    {**error.error_body(), **_accepted_ids(accepted)}, status=error.status
                )
        if event["type"] == "agent.error":
            error = error_from_event(event)
            return Response({**error.error_body(), **_accepted_ids(accepted)}, status=error.status,
                            headers=error.headers())
        return Response(_answered_body(accepted, event))


async def stored_reply_within(message_id, wait: float) -> dict:
    """The reply (or failure) of a message accepted by an earlier request, read from the database
    until it is there; raises TimeoutError after ``wait`` seconds. The earlier request's server,
    which may be another one, is the one told when the reply comes: a resent request is rare
    enough to read, at most every 2 s."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    pause = 0.1
    while (stored := await database_sync_to_async(stored_reply_event)(message_id)) is None:
        if (left := deadline - loop.time()) <= 0:
            raise TimeoutError
        await asyncio.sleep(min(pause, left))
        pause = min(pause * 2, 2.0)
    return stored


def stored_reply_event(message_id) -> dict | None:
    """The reply (or failure) stored for the message, as the waiter's event; None while pending."""
    message = Message.objects.only("status", "error_code", "error_message", "conversation_id", "created_at",
                                   "control").get(pk=message_id)
    if message.status == Status.FAILED:  # as the first request was told (delivery.fail_message)
        if message.error_code == QuotaExceeded.code:
            # Without a Retry-After: this message is not tried again, however long one waits.
            return {"type": "agent.error", "code": QuotaExceeded.code,
                    "message": message.error_message or QuotaExceeded.default_message}
        return {"type": "agent.error", "code": "agent_failed", "message": AgentFailed.default_message}
    replies = Message.objects.filter(direction=Direction.OUTBOUND)
    # Not a person's follow-up to the agent's answer, stored (by created_at) before it in a race.
    reply = replies.filter(reply_to=message).exclude(control__has_key=FOLLOW_UP_KEY).order_by("created_at").first()
    if reply is None and (answered_by := (message.control or {}).get(ANSWERED_BY_KEY)):
        reply = replies.filter(pk=answered_by).first()  # a person's reply to a later message (a handoff)
    elif reply is None and message.status == Status.ANSWERED:
        # Answered in a handoff before the reply was recorded on the message: a person's reply to
        # the first later message with one (not the first stored later, which may answer an
        # earlier message; not the agent's answer to a later message).
        reply = replies.filter(
            PERSONS_REPLY, conversation_id=message.conversation_id, reply_to__created_at__gt=message.created_at,
        ).order_by("reply_to__created_at", "created_at").first()
    return reply_event(reply) if reply is not None else None


def _accepted_ids(accepted: Accepted) -> dict:
    return {"message_id": str(accepted.message.id), "conversation_id": str(accepted.conversation.id)}


def _accepted_body(accepted: Accepted) -> dict:
    return {**_accepted_ids(accepted), "status": "accepted"}


def _answered_body(accepted: Accepted, event: dict) -> dict:
    if event["type"] == "agent.error":
        raise AgentFailed(event.get("message"))
    reply = {k: event[k] for k in ("message", "model", "usage", "latency_ms")}
    return {**_accepted_ids(accepted), "reply": {"message_id": event["message_id"], **reply}}


def user_may_read(user, conversation: Conversation) -> bool:
    """The conversation's channel is one the user may use now: a channel since closed to them
    keeps its transcripts from them (and from a key anyone minted in their name), as from staff
    who may not use it. Per-process channel and permission caches: no query on a role's channel."""
    channel = channel_by_id(conversation.channel_id)
    return channel is not None and user_can_use_channel(user, channel)


def key_may_read(api_key, conversation: Conversation) -> bool:
    """A key limited to some channels reads only their conversations; one limited to some agents,
    only conversations no other agent spoke in."""
    if api_key is None:
        return True
    channels, agents = api_key_scope(api_key)
    if channels and conversation.channel_id not in channels:
        return False
    return not agents or not conversation.messages.filter(agent_id__isnull=False).exclude(
        agent_id__in=agents).exists()


class ConversationMessagesApi(ApiIpRulesMixin, APIView):
    """The newest messages of one of the caller's own conversations, on a channel they may use, oldest first."""

    @extend_schema(responses={200: ConversationMessageSerializer(many=True), 404: ErrorSerializer})
    def get(self, request, conversation_id):
        conversation = Conversation.objects.filter(pk=conversation_id, user=request.user).first()
        if (conversation is None or not user_may_read(request.user, conversation)
                or not key_may_read(request.auth, conversation)):
            raise NotFound("No such conversation.")
        # The newest ones (a long conversation's first ones would hide every later reply), oldest first.
        limit = settings.GATEWAY_HISTORY_MESSAGES * 10
        messages = list(conversation.messages.order_by("-created_at")[:limit])[::-1]
        return Response({
            "conversation_id": str(conversation.id),
            "messages": ConversationMessageSerializer(messages, many=True).data,
        })

"""Web chat identity: logged-in sessions and signed visitor tokens."""
from __future__ import annotations

import uuid

from django.conf import settings
from django.core import signing

from apps.conversations.errors import Forbidden, NotFound, Unauthenticated
from apps.conversations.models import Conversation
from apps.identities.access import check_channel_access
from apps.identities.models import ChannelIdentity
from apps.identities.services import identity_create_customer

VISITOR_SALT = "webchat.visitor"


def visitor_token_issue(channel) -> str:
    """A new signed visitor id, bound to the channel. Holding it is being that visitor."""
    return signing.dumps({"c": channel.slug, "v": uuid.uuid4().hex}, salt=VISITOR_SALT, compress=True)


def visitor_token_read(token: str, channel) -> str:
    """The visitor id inside a token issued for ``channel``; raises Unauthenticated."""
    try:
        data = signing.loads(
            token, salt=VISITOR_SALT, max_age=settings.WEBCHAT_VISITOR_TOKEN_MAX_AGE_SECONDS
        )
    except signing.BadSignature as exc:
        raise Unauthenticated("The visitor token is invalid or expired; reload the page.") from exc
    if not isinstance(data, dict) or data.get("c") != channel.slug or not data.get("v"):
        raise Unauthenticated("The visitor token is not for this chat.")
    return data["v"]


def resolve_chat_user(*, channel, session_user, visitor_token: str, conversation_id: str,
                      client_ip: str | None = None):
    """(user, conversation id or None) for a web chat connection; raises GatewayError.

    Blocked users, and users who may not use this channel, are refused here (and audited).
    """
    if session_user is not None and session_user.is_authenticated:
        user = session_user
    elif visitor_token:
        if not channel.allow_visitors:
            raise Forbidden("Please sign in to use this chat.")
        visitor_id = visitor_token_read(visitor_token, channel)
        identity = (
            ChannelIdentity.objects.select_related("user")
            .filter(channel=channel, external_id=f"visitor:{visitor_id}")
            .first()
        ) or identity_create_customer(
            channel=channel, external_id=f"visitor:{visitor_id}", visitor=True
        )
        user = identity.user
    else:
        raise Unauthenticated("Sign in, or open the chat from its page.")
    check_channel_access(user=user, channel=channel, client_ip=client_ip)
    if not conversation_id:
        return user, None
    try:
        uuid.UUID(conversation_id)
    except ValueError as exc:
        raise NotFound("No such conversation.") from exc
    if not Conversation.objects.filter(pk=conversation_id, channel=channel, user=user).exists():
        raise NotFound("No such conversation.")
    return user, conversation_id

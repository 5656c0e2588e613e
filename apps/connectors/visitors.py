"""Web chat identity: logged-in sessions and signed visitor tokens.

A visitor costs nothing until it speaks: the chat page mints a signed token (limited per client
address), a socket opened with it holds only the visitor id, and the visitor's customer ``User``
and ``ChannelIdentity`` are made with its first message (``visitor_user``). Sockets opened and
closed without a word leave no rows.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass
from importlib import import_module
from types import SimpleNamespace

from django.conf import settings
from django.contrib import auth
from django.contrib.auth import get_user_model
from django.core import signing
from django.db.models import Exists, OuterRef

from apps.conversations.models import Conversation, Message
from apps.core.errors import Forbidden, NotFound, Unauthenticated
from apps.identities.access import check_channel_access, refuse
from apps.identities.models import ChannelIdentity, user_by_id
from apps.identities.roles import Role, ensure_role_groups
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


@dataclass
class ChatSender:
    """Who a web chat socket speaks for. ``user`` is None for a visitor who has not spoken yet
    (``visitor_id`` then names it; ``visitor_user`` makes its user with the first message)."""

    user: object | None
    visitor_id: str | None = None
    conversation_id: str | None = None


def _visitor_external_id(visitor_id: str) -> str:
    return f"visitor:{visitor_id}"


def _visitor_identity(channel, visitor_id: str):
    return (ChannelIdentity.objects.select_related("user")
            .filter(channel=channel, external_id=_visitor_external_id(visitor_id)).first())


def new_customer_may_use(channel) -> bool:
    """Whether a customer with no permissions of its own (a new visitor) may use ``channel``:
    a public channel, or one the customer role may use by visibility or object permission."""
    from guardian.shortcuts import get_perms

    visibility = getattr(channel, "visibility", "admin")
    if visibility == "public":
        return True
    group = ensure_role_groups()[Role.CUSTOMER]
    if group.permissions.filter(content_type__app_label="identities", codename=f"use_{visibility}_channels").exists():
        return True
    return "use_channel" in get_perms(group, channel)


def resolve_chat_user(*, channel, session_user, visitor_token: str, conversation_id: str,
                      client_ip: str | None = None) -> ChatSender:
    """Who a web chat connection speaks for, and the conversation it opens; raises GatewayError.

    Blocked users, and users who may not use this channel, are refused here (and audited). A
    visitor seen before is its user; a new one stays a visitor id until it speaks.
    """
    visitor_id = None
    if session_user is not None and session_user.is_authenticated:
        user = session_user
    elif visitor_token:
        if not channel.allow_visitors:
            raise Forbidden("Please sign in to use this chat.")
        visitor_id = visitor_token_read(visitor_token, channel)
        identity = _visitor_identity(channel, visitor_id)
        user = identity.user if identity is not None else None
    else:
        raise Unauthenticated("Sign in, or open the chat from its page.")
    if user is None:
        if not new_customer_may_use(channel):
            refuse(Forbidden("You are not allowed to use this channel."), action="channel.refused",
                   reason="permission", target=channel, client_ip=client_ip, visitor=True)
        if conversation_id:  # nobody new owns a conversation
            raise NotFound("No such conversation.")
        return ChatSender(user=None, visitor_id=visitor_id)
    check_channel_access(user=user, channel=channel, client_ip=client_ip)
    if not conversation_id:
        return ChatSender(user=user, visitor_id=visitor_id)
    try:
        uuid.UUID(conversation_id)
    except ValueError as exc:
        raise NotFound("No such conversation.") from exc
    if not Conversation.objects.filter(pk=conversation_id, channel=channel, user=user).exists():
        raise NotFound("No such conversation.")
    return ChatSender(user=user, visitor_id=visitor_id, conversation_id=conversation_id)


def sender_now(user, *, session_key: str | None = None):
    """The socket's user as it stands now (kept per process until a user changes): a block, a
    deactivation or a permission taken away after the socket opened applies to its next message,
    and so does signing out of the session it speaks for (``session_key``)."""
    if session_key is not None:
        session = import_module(settings.SESSION_ENGINE).SessionStore(session_key)  # read afresh
        if auth.get_user(SimpleNamespace(session=session)).pk != user.pk:
            raise Unauthenticated("You have signed out; sign in and reload the page.")
    current = user_by_id(user.pk)
    if current is None:
        raise Unauthenticated("You are no longer signed in; reload the page.")
    return current


def visitor_user(*, channel, visitor_id: str):
    """The visitor's customer user, made now if this is its first message (idempotent under races)."""
    identity = _visitor_identity(channel, visitor_id) or identity_create_customer(
        channel=channel, external_id=_visitor_external_id(visitor_id), visitor=True
    )
    return identity.user


def visitors_prune(*, joined_before) -> int:
    """Delete visitor users joined before ``joined_before`` that own no conversation and sent no
    message (with their channel identities); returns how many. Visitors are made at their first
    message now, so this clears rows left from when every connection made one."""
    silent = (get_user_model().objects.filter(is_visitor=True, date_joined__lt=joined_before, conversations=None)
              .exclude(Exists(Message.objects.filter(sender=OuterRef("pk")))))
    count = 0
    for user in silent.iterator(chunk_size=500):
        user.delete()
        count += 1
    return count

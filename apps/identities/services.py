"""Who is speaking: channel identities → users, visitors, API keys."""
from __future__ import annotations

import uuid

from django.contrib.auth import get_user_model
from django.db import IntegrityError, transaction

from .models import ChannelIdentity
from .roles import Role, ensure_role_groups


def identify_sender(msg, *, channel, principal=None):
    """The gateway user behind an inbound message.

    A principal known to the entry point (API key owner, web chat session or visitor) wins;
    otherwise the (channel, sender id) identity is looked up, and an unknown sender becomes a new
    customer linked to that identity.
    """
    if principal is not None:
        return principal
    identity = (
        ChannelIdentity.objects.select_related("user")
        .filter(channel=channel, external_id=msg.user_id)
        .first()
    )
    if identity is not None:
        return identity.user
    return identity_create_customer(
        channel=channel, external_id=msg.user_id,
        display_name=str(msg.metadata.get("user_name", "")),
    ).user


def identity_create_customer(*, channel, external_id: str, display_name: str = "", visitor=False):
    """Create a customer user and its identity on ``channel`` (idempotent under races)."""
    User = get_user_model()
    try:
        with transaction.atomic():
            user = User.objects.create(
                username=f"{channel.kind}-{uuid.uuid4().hex[:12]}",
                first_name=display_name[:150],
                is_visitor=visitor,
            )
            user.set_unusable_password()
            user.save(update_fields=["password"])
            user.groups.add(ensure_role_groups()[Role.CUSTOMER])
            return ChannelIdentity.objects.create(
                channel=channel, external_id=external_id, user=user, display_name=display_name
            )
    except IntegrityError:
        return ChannelIdentity.objects.select_related("user").get(
            channel=channel, external_id=external_id
        )

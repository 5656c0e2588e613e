"""Who is speaking, and the staff actions that change who someone is or what they may do.

Every change to roles, object permissions, API keys, blocks, identity links and merges writes an
audit event (``apps.logs.services.audit``) with the acting staff member.
"""
from __future__ import annotations

import logging
import uuid
from datetime import timedelta

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import IntegrityError, models, transaction
from django.utils import timezone

from apps.logs.services import audit
from gateway_project import config_cache

from .access import refuse_unknown_sender
from .models import ApiKey, ChannelIdentity
from .roles import ROLE_ORDER, Role, ensure_role_groups

logger = logging.getLogger(__name__)

# Rows that record who did something stay with the account that did it when users are merged.
MERGE_KEEPS_HISTORY_OF = {"logs.auditevent", "admin.logentry"}


# --- who is speaking ---------------------------------------------------------------------------


def identify_sender(msg, *, channel, principal=None, client_ip: str | None = None):
    """The gateway user behind an inbound message.

    A principal known to the entry point (API key owner, web chat session or visitor) wins;
    otherwise the (channel, sender id) identity is looked up. An unknown sender is linked to the
    user with the same verified email (when ``IDENTITY_LINK_VERIFIED_EMAIL`` is on and the channel
    vouched for the address in ``metadata["verified_email"]``), else handled by the channel's
    ``unknown_senders`` policy: a new customer, or a polite refusal (``UnknownSender``) and an
    audit event.
    """
    if principal is not None:
        return principal
    known = identity_user(channel, msg.user_id)
    if known is not None:
        return known
    display_name = str(msg.metadata.get("user_name", ""))
    if (user := user_with_verified_email(msg.metadata.get("verified_email"))) is not None:
        return identity_attach(channel=channel, external_id=msg.user_id, user=user,
                               display_name=display_name, client_ip=client_ip).user
    if channel.unknown_senders == "refuse":
        refuse_unknown_sender(channel=channel, external_id=msg.user_id, client_ip=client_ip)
    return identity_create_customer(channel=channel, external_id=msg.user_id, display_name=display_name).user


def identity_user(channel, external_id: str):
    """The user behind a known (channel, sender id) identity, or None. Kept per process (a busy
    Slack or WeCom channel asks for the same senders all day); moving an identity to another user
    (identity_link) or merging users counts as a change (gateway_project.config_cache)."""
    from gateway_project.config_cache import cached

    from .models import user_by_id

    user_id = cached("identity", (channel.pk, external_id), lambda: (
        ChannelIdentity.objects.filter(channel=channel, external_id=external_id).values_list("user_id", flat=True)
        .first()))
    return user_by_id(user_id) if user_id is not None else None


def user_with_verified_email(email):
    """The one active, non-visitor user with this email, when linking by verified email is on."""
    if not settings.IDENTITY_LINK_VERIFIED_EMAIL or not isinstance(email, str) or "@" not in email:
        return None
    matches = list(
        get_user_model().objects.filter(
            email__iexact=email.strip(), is_active=True, is_visitor=False, merged_into__isnull=True
        )[:2]
    )
    return matches[0] if len(matches) == 1 else None


def identity_attach(*, channel, external_id: str, user, display_name: str = "", client_ip=None) -> ChannelIdentity:
    """Link a new (channel, external id) to an existing user because the channel verified their email."""
    try:
        with transaction.atomic():
            identity = ChannelIdentity.objects.create(
                channel=channel, external_id=external_id, user=user, display_name=display_name[:255]
            )
    except IntegrityError:
        return ChannelIdentity.objects.select_related("user").get(channel=channel, external_id=external_id)
    audit(action="identity.linked", target=identity, client_ip=client_ip, reason="verified_email",
          after={"user": str(user.pk), "channel": channel.slug, "external_id": external_id})
    return identity


def identity_create_customer(*, channel, external_id: str, display_name: str = "", visitor=False):
    """Create a customer user and its identity on ``channel`` (idempotent under races)."""
    User = get_user_model()
    try:
        # Nobody can have kept anything about a user who did not exist: not a configuration change.
        with transaction.atomic(), config_cache.unchanged():
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


# --- staff actions -----------------------------------------------------------------------------


def role_names(user) -> list[str]:
    return sorted(g.name for g in user.groups.all() if g.name in ROLE_ORDER)


@transaction.atomic
def user_set_role(*, user, role: str, actor, client_ip: str | None = None) -> None:
    """Make ``role`` the user's only role group."""
    groups = ensure_role_groups()
    if role not in groups:
        raise ValueError(f"Unknown role {role!r}; one of {', '.join(ROLE_ORDER)}.")
    before = role_names(user)
    user.groups.remove(*[g for name, g in groups.items() if name != role])
    user.groups.add(groups[role])
    audit(action="user.role_changed", actor=actor, target=user, client_ip=client_ip,
          before={"roles": before}, after={"roles": [role]})


@transaction.atomic
def user_block(*, user, actor, reason: str = "", client_ip: str | None = None, **detail) -> None:
    """Refuse the user on every channel from now on. ``detail`` goes into the audit event."""
    before = {"blocked_at": user.blocked_at.isoformat() if user.blocked_at else None}
    user.blocked_at = timezone.now()
    user.blocked_reason = reason[:255]
    user.save(update_fields=["blocked_at", "blocked_reason"])
    audit(action="user.blocked", actor=actor, target=user, client_ip=client_ip, before=before,
          after={"blocked_at": user.blocked_at.isoformat(), "reason": user.blocked_reason},
          reason=user.blocked_reason, **detail)


@transaction.atomic
def user_unblock(*, user, actor, client_ip: str | None = None) -> None:
    before = {"blocked_at": user.blocked_at.isoformat() if user.blocked_at else None,
              "reason": user.blocked_reason}
    user.blocked_at, user.blocked_reason = None, ""
    user.save(update_fields=["blocked_at", "blocked_reason"])
    audit(action="user.unblocked", actor=actor, target=user, client_ip=client_ip, before=before,
          after={"blocked_at": None})


@transaction.atomic
def identity_link(*, identity: ChannelIdentity, user, actor, client_ip: str | None = None) -> None:
    """Move one channel identity to another user (the same person, seen on another channel)."""
    before = str(identity.user_id)
    identity.user = user
    identity.save(update_fields=["user"])
    audit(action="identity.linked", actor=actor, target=identity, client_ip=client_ip,
          before={"user": before}, after={"user": str(user.pk)})


@transaction.atomic
def user_merge(*, survivor, merged, actor, client_ip: str | None = None) -> dict[str, int]:
    """Fold ``merged`` into ``survivor``: one person from now on. Returns rows moved per model.

    Everything that points at ``merged`` (identities, API keys, conversations, sent messages, usage
    logs, object permissions, ...) moves to ``survivor``; audit and admin history stay with the
    account that acted. ``merged`` is kept, deactivated, with ``merged_into`` set, so its past
    stays traceable. Its role groups and global permissions are added to the survivor's.
    """
    if survivor.pk == merged.pk:
        raise ValueError("A user cannot be merged into itself.")
    if merged.merged_into_id is not None:
        raise ValueError(f"{merged} was already merged into another user.")
    moved: dict[str, int] = {}
    for relation in _user_relations():
        model, field = relation.related_model, relation.field.name
        count = _repoint(model._base_manager.filter(**{field: merged}), field, survivor)
        if count:
            moved[model._meta.label_lower] = moved.get(model._meta.label_lower, 0) + count
    before_roles = role_names(survivor)
    survivor.groups.add(*merged.groups.all())
    survivor.user_permissions.add(*merged.user_permissions.all())
    merged.is_active = False
    merged.merged_into = survivor
    merged.set_unusable_password()
    merged.save(update_fields=["is_active", "merged_into", "password"])
    audit(action="user.merged", actor=actor, target=survivor, client_ip=client_ip,
          before={"survivor_roles": before_roles, "merged": str(merged.pk), "merged_username": merged.username},
          after={"survivor_roles": role_names(survivor)}, moved=moved)
    return moved


def _user_relations():
    """Every foreign key to the user model from another table (hidden ones too), minus history."""
    User = get_user_model()
    for relation in User._meta.get_fields(include_hidden=True):
        if not isinstance(relation, models.ManyToOneRel) or isinstance(relation, models.OneToOneRel):
            continue
        if relation.related_model._meta.auto_created:  # m2m tables (groups) are handled apart
            continue
        if relation.related_model._meta.label_lower in MERGE_KEEPS_HISTORY_OF:
            continue
        yield relation


def _repoint(queryset, field: str, survivor) -> int:
    """Point the rows at the survivor; rows that would break a uniqueness rule stay behind."""
    try:
        with transaction.atomic():
            return queryset.update(**{field: survivor})
    except IntegrityError:
        pass
    count = 0
    for pk in list(queryset.values_list("pk", flat=True)):
        try:
            with transaction.atomic():
                count += queryset.model._base_manager.filter(pk=pk).update(**{field: survivor})
        except IntegrityError:
            logger.info("merge: row left behind (the survivor already has its twin)",
                        extra={"model": queryset.model._meta.label_lower, "pk": str(pk)})
    return count


def api_key_describe(key: ApiKey) -> dict:
    return {
        "prefix": key.prefix, "name": key.name, "user": str(key.user_id),
        "expires_at": key.expires_at.isoformat() if key.expires_at else None,
        "revoked_at": key.revoked_at.isoformat() if key.revoked_at else None,
        "channels": sorted(key.channels.values_list("slug", flat=True)) if key.pk else [],
        "agents": sorted(key.agents.values_list("slug", flat=True)) if key.pk else [],
    }


@transaction.atomic
def api_key_create(*, user, actor, name: str = "", expires_at=None, channels=(), agents=(),
                   client_ip: str | None = None) -> tuple[ApiKey, str]:
    """A new key for ``user``; returns (row, raw key). Show the raw key once: it is not stored."""
    key, raw_key = ApiKey.generate(user=user, name=name, expires_at=expires_at)
    key.channels.set(channels)
    key.agents.set(agents)
    audit(action="apikey.created", actor=actor, target=key, client_ip=client_ip, after=api_key_describe(key))
    return key, raw_key


@transaction.atomic
def api_key_revoke(*, key: ApiKey, actor, client_ip: str | None = None, **detail) -> None:
    if key.revoked_at is not None:
        return
    before = api_key_describe(key)
    key.revoked_at = timezone.now()
    key.save(update_fields=["revoked_at"])
    audit(action="apikey.revoked", actor=actor, target=key, client_ip=client_ip, before=before,
          after=api_key_describe(key), **detail)


class KeyNotRotated(ValueError):
    """The key cannot be rotated as asked (revoked or expired, or a grace period out of bounds)."""


@transaction.atomic
def api_key_rotate(*, key: ApiKey, actor, grace_seconds: int, client_ip: str | None = None) -> str:
    """Give ``key`` a new prefix and secret; returns the raw new key, kept nowhere (show it once).

    The row stays, and with it everything that points to it (quota policy, usage, logs, audit) and
    its name, owner, expiry and scopes. The secret it replaces keeps working for ``grace_seconds``
    (0: not at all; at most GATEWAY_API_KEY_ROTATION_MAX_GRACE_SECONDS) so clients can move over;
    it replaces any older one still in its grace period. Raises KeyNotRotated for a revoked or
    expired key or a grace period out of bounds. Audited as ``apikey.rotated`` (prefixes, never a
    secret or a hash); the save is a configuration change, so every process sees it promptly.
    """
    if not 0 <= grace_seconds <= settings.GATEWAY_API_KEY_ROTATION_MAX_GRACE_SECONDS:
        raise KeyNotRotated(f"The grace period must be between 0 and "
                            f"{settings.GATEWAY_API_KEY_ROTATION_MAX_GRACE_SECONDS} seconds.")
    key.refresh_from_db(from_queryset=ApiKey.objects.select_for_update())  # two rotations: one after the other
    if not key.is_usable:
        raise KeyNotRotated(f"{key.masked} is revoked or expired: it cannot be rotated.")
    before = {"prefix": key.prefix, "previous_prefix": key.previous_prefix}
    if grace_seconds:
        key.previous_prefix, key.previous_key_hash = key.prefix, key.key_hash
        key.previous_valid_until = timezone.now() + timedelta(seconds=grace_seconds)
    else:
        key.previous_prefix, key.previous_key_hash, key.previous_valid_until = None, "", None
    key.previous_last_used_at = None  # not used yet as the previous secret
    raw_key = key.set_new_secret()
    key.save(update_fields=["prefix", "key_hash", "previous_prefix", "previous_key_hash", "previous_valid_until",
                            "previous_last_used_at"])
    valid_until = key.previous_valid_until.isoformat() if key.previous_valid_until else None
    audit(action="apikey.rotated", actor=actor, target=key, client_ip=client_ip, before=before,
          after={"prefix": key.prefix, "previous_prefix": key.previous_prefix, "previous_valid_until": valid_until},
          grace_seconds=grace_seconds)
    return raw_key


@transaction.atomic
def api_key_end_grace(*, key: ApiKey, actor, client_ip: str | None = None) -> bool:
    """Stop accepting the secret ``key``'s last rotation replaced, now rather than at the end of its
    grace period (once its clients have moved over, or when it leaked). Its prefix is kept, so that
    it is refused as a rotated key's old secret. Returns False, auditing nothing, when no previous
    secret was still accepted; audited as ``apikey.grace_ended`` otherwise."""
    key.refresh_from_db(from_queryset=ApiKey.objects.select_for_update())
    if not key.previous_secret_accepted:
        return False
    before = {"previous_prefix": key.previous_prefix, "previous_valid_until": key.previous_valid_until.isoformat()}
    key.previous_valid_until = timezone.now()
    key.save(update_fields=["previous_valid_until"])
    last_used = key.previous_last_used_at.isoformat() if key.previous_last_used_at else None
    audit(action="apikey.grace_ended", actor=actor, target=key, client_ip=client_ip, before=before,
          after={"previous_prefix": key.previous_prefix, "previous_valid_until": key.previous_valid_until.isoformat()},
          previous_last_used_at=last_used)
    return True


def keys_scoped_to(scope: str, obj) -> list:
    """The pks of the usable keys whose ``scope`` ("agents", "channels") names ``obj``."""
    return list(ApiKey.objects.filter(**{scope: obj}, revoked_at__isnull=True).values_list("pk", flat=True))


def revoke_keys_left_unscoped(scope: str, key_pks, deleted) -> None:
    """``deleted`` (an agent or a channel) is gone: revoke those of ``key_pks`` whose ``scope`` it
    left empty. An empty scope means "any", so they would otherwise be widened to every agent or
    channel their owner may use. Asked after the deletion, so a bulk one that takes a key's whole
    scope at once is seen whole."""
    empty = ApiKey.objects.filter(pk__in=key_pks, revoked_at__isnull=True).annotate(
        named=models.Count(scope)).filter(named=0)
    for key in empty:
        api_key_revoke(key=key, actor=None, reason=f"its whole {scope} scope was deleted",
                       deleted=f"{deleted._meta.label_lower}:{deleted.pk}")


@transaction.atomic
def object_permission_set(*, holder, obj, perms: set[str], actor, client_ip: str | None = None) -> None:
    """Give ``holder`` (a user or a group) exactly ``perms`` (codenames) on ``obj``; audited."""
    from guardian.shortcuts import assign_perm, get_group_perms, get_user_perms, remove_perm

    is_group = holder.__class__.__name__ == "Group"
    before = set(get_group_perms(holder, obj) if is_group else get_user_perms(holder, obj))
    for perm in before - perms:
        remove_perm(perm, holder, obj)
    for perm in perms - before:
        assign_perm(perm, holder, obj)
    if before != perms:
        audit(action="permission.changed", actor=actor, target=obj, client_ip=client_ip,
              holder=f"{'group' if is_group else 'user'}:{holder.pk}", holder_name=str(holder),
              before={"perms": sorted(before)}, after={"perms": sorted(perms)})

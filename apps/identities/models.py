"""People and their credentials: one User behind many channel identities and API keys."""
from __future__ import annotations

import hashlib
import secrets
import uuid

from django.conf import settings
from django.contrib.auth.models import AbstractUser
from django.db import models
from django.utils import timezone

from .roles import ROLE_ORDER, Role


class User(AbstractUser):
    """The one person behind any number of channel identities. Roles are Groups (see roles.py)."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    is_visitor = models.BooleanField(
        default=False, help_text="Created for an anonymous web chat visitor."
    )
    blocked_at = models.DateTimeField(
        null=True, blank=True, db_index=True,
        help_text="When set, the user is refused on every channel (see identities.access).",
    )
    blocked_reason = models.CharField(max_length=255, blank=True)
    merged_into = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="merged_users",
        help_text="This account was merged into another; its history moved there.",
    )

    class Meta(AbstractUser.Meta):
        swappable = "AUTH_USER_MODEL"
        # Global (not per-object) permissions. Role groups get them in roles.ROLE_PERMISSIONS.
        permissions = [
            *[(f"use_{level}_{kind}", f"Can use {level} {kind}")
              for kind in ("agents", "tools") for level in ("public", "internal", "admin")],
            # Public channels are open to every active user (see Channel.unknown_senders for strangers).
            ("use_internal_channels", "Can use internal channels"),
            ("use_admin_channels", "Can use admin channels"),
            ("grant_role", "Can grant and revoke roles and permissions"),
            ("block_user", "Can block and unblock users"),
            ("merge_users", "Can merge users and link identities"),
        ]

    @property
    def is_blocked(self) -> bool:
        return self.blocked_at is not None

    @property
    def role(self) -> str:
        """The highest role among the user's groups (customer when none)."""
        from .permissions import role_rank

        rank = role_rank(self)
        return ROLE_ORDER[rank] if rank >= 0 else Role.CUSTOMER


class ChannelIdentity(models.Model):
    """Who a sender is on one configured channel: (channel, external id) → user."""

    channel = models.ForeignKey(
        "connectors.Channel", on_delete=models.CASCADE, related_name="identities"
    )
    external_id = models.CharField(max_length=255)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="identities"
    )
    display_name = models.CharField(max_length=255, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["channel", "external_id"], name="identity_unique_per_channel"
            )
        ]
        verbose_name_plural = "channel identities"

    def __str__(self) -> str:
        return f"{self.channel_id}:{self.external_id} → {self.user_id}"


API_KEY_PREFIX_CHARS = 8


def user_by_id(pk) -> User | None:
    """The user with primary key ``pk`` (a worker answering them), kept per process like an API
    key's user (gateway_project.config_cache: a save that may change whether or what they may do
    clears it). Each call gets its own copy."""
    from gateway_project.config_cache import cached_copy

    return cached_copy("user_by_id", pk, lambda: User.objects.filter(pk=pk).first())


def api_key_by_id(pk) -> ApiKey | None:
    """The API key with primary key ``pk`` (a worker answering a message it brought), kept per
    process as ``user_by_id``: a revocation reaches the workers within GATEWAY_CONFIG_CHECK_SECONDS."""
    from gateway_project.config_cache import cached_copy

    return cached_copy("api_key_by_id", pk, lambda: ApiKey.objects.filter(pk=pk).first())


def hash_api_key(raw_key: str) -> str:
    """API keys carry 256 bits of randomness, so one SHA-256 is the right hash (no salt/KDF)."""
    return hashlib.sha256(raw_key.encode()).hexdigest()


class ApiKeyQuerySet(models.QuerySet):
    def usable(self):
        now = timezone.now()
        return self.filter(revoked_at__isnull=True).filter(
            models.Q(expires_at__isnull=True) | models.Q(expires_at__gt=now)
        )


class ApiKey(models.Model):
    """A secret for the API channel. Only its SHA-256 is stored; the key is shown once."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_keys"
    )
    name = models.CharField(max_length=100, blank=True)
    prefix = models.CharField(max_length=16, unique=True, editable=False)
    key_hash = models.CharField(max_length=64, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    # The secret a rotation replaced, accepted until previous_valid_until so that clients can move to
    # the new one (services.api_key_rotate). Only one is ever kept; its hash only, like the current one.
    previous_prefix = models.CharField(max_length=16, unique=True, null=True, blank=True, editable=False)
    previous_key_hash = models.CharField(max_length=64, blank=True, editable=False)
    previous_valid_until = models.DateTimeField(null=True, blank=True, editable=False)
    # When the previous secret was last accepted (to the minute): whether clients still use it, so
    # that staff can end its grace period early (services.api_key_end_grace). None: not since the rotation.
    previous_last_used_at = models.DateTimeField(null=True, blank=True, editable=False)

    # Scopes: empty means every channel / every agent the owner may use.
    channels = models.ManyToManyField(
        "connectors.Channel", blank=True, related_name="+",
        help_text="Channels this key may be used on (none selected: any).",
    )
    agents = models.ManyToManyField(
        "agents.Agent", blank=True, related_name="+",
        help_text="Agents this key may talk to (none selected: any the owner may use).",
    )

    objects = ApiKeyQuerySet.as_manager()

    class Meta:
        verbose_name = "API key"

    def __str__(self) -> str:
        return f"gw_{self.prefix}_… ({self.user})"

    @classmethod
    def generate(cls, *, user, name: str = "", expires_at=None) -> tuple[ApiKey, str]:
        """Create a key; returns (row, raw key). The raw key is never stored or shown again."""
        key = cls(user=user, name=name, expires_at=expires_at)
        raw_key = key.set_new_secret()
        key.save()
        return key, raw_key

    def set_new_secret(self) -> str:
        """Give this key (unsaved) a fresh prefix, one no key has as its current or previous prefix,
        and a fresh secret; returns the raw key, kept nowhere."""
        while True:
            self.prefix = secrets.token_hex(API_KEY_PREFIX_CHARS // 2)
            if not ApiKey.objects.filter(models.Q(prefix=self.prefix) | models.Q(previous_prefix=self.prefix)).exists():
                break
        raw_key = f"gw_{self.prefix}_{secrets.token_urlsafe(32)}"
        self.key_hash = hash_api_key(raw_key)
        return raw_key

    @property
    def masked(self) -> str:
        return f"gw_{self.prefix}_…"

    def hash_for_prefix(self, prefix: str) -> str:
        """The stored hash a raw key naming ``prefix`` must match: the current secret's, or the
        previous one's (whether it is still accepted is ``previous_secret_accepted``)."""
        if prefix == self.prefix or prefix != self.previous_prefix:
            return self.key_hash
        return self.previous_key_hash

    @property
    def previous_secret_accepted(self) -> bool:
        """Whether the secret the last rotation replaced still works (within its grace period)."""
        return bool(self.previous_prefix and self.previous_key_hash and self.previous_valid_until
                    and self.previous_valid_until > timezone.now())

    @property
    def previous_secret_use(self) -> str:
        """When the previous secret was last accepted, as staff read it."""
        if self.previous_last_used_at is None:
            return "not used since the rotation"
        return f"last used {self.previous_last_used_at:%Y-%m-%d %H:%M} UTC"

    @property
    def is_usable(self) -> bool:
        if self.revoked_at is not None:
            return False
        return self.expires_at is None or self.expires_at > timezone.now()

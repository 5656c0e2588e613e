"""What a user may use: agents, tools and channels, by role and by object permission.

This is the one place the rest of the gateway asks. Two ways to be allowed:

- the role: an object's ``visibility`` (``public``, ``internal``, ``admin``) needs the global
  permission ``identities.use_<visibility>_<kind>`` (agents, tools, channels), which the role groups
  carry (see roles.ROLE_PERMISSIONS): customers public, employees internal, admins admin.
  A public channel is open to every active user (strangers are its ``unknown_senders`` policy);
- an object permission (django-guardian) on that one object, given to the user or one of their
  groups: ``agents.use_agent``, ``connectors.use_channel``, ``<app>.use_tool``.

Blocked, merged-away and inactive users may use nothing. These functions only answer; the
refusals (error + audit event) are in ``access.py``.
"""
from __future__ import annotations

from dataclasses import dataclass

from django.contrib.auth import get_user_model
from django.contrib.auth.backends import ModelBackend

from gateway_project.config_cache import cached

from .roles import ROLE_ORDER

VISIBILITIES = ("public", "internal", "admin")


@dataclass(frozen=True)
class UserAccess:
    """A user's groups and global permissions, as Django's ModelBackend would load them."""

    groups: dict  # group id → name
    user_perms: frozenset
    group_perms: frozenset


NO_ACCESS = UserAccess(groups={}, user_perms=frozenset(), group_perms=frozenset())


def user_access(user) -> UserAccess:
    """The user's groups and global permissions, kept per process (gateway_project.config_cache).

    Also fills the caches ModelBackend reads, so ``user.has_perm("app.codename")`` on this user
    object asks no query. Object permissions (django-guardian) are always read fresh.
    """
    if user.pk is None or not user.is_authenticated:
        return NO_ACCESS  # anonymous: no groups, no permissions (and nothing to load)
    access = getattr(user, "_gateway_access", None)
    if access is None:
        access = cached("user_access", user.pk, lambda: _load_access(user))
        user._gateway_access = access
        user._user_perm_cache = set(access.user_perms)
        user._group_perm_cache = set(access.group_perms)
        user._perm_cache = user._user_perm_cache | user._group_perm_cache
    return access


def forget_access(user) -> None:
    """Drop what this user object has loaded about its groups and permissions."""
    for name in ("_gateway_access", "_perm_cache", "_user_perm_cache", "_group_perm_cache"):
        user.__dict__.pop(name, None)


def _load_access(user) -> UserAccess:
    fresh = get_user_model()(pk=user.pk, is_active=True, is_superuser=user.is_superuser)
    backend = ModelBackend()
    return UserAccess(
        groups=dict(user.groups.values_list("pk", "name")),
        user_perms=frozenset(backend.get_user_permissions(fresh)),
        group_perms=frozenset(backend.get_group_permissions(fresh)),
    )


def role_rank(user) -> int:
    """0 customer, 1 employee, 2 admin; -1 for a user in no role (an outsider)."""
    names = set(user_access(user).groups.values())
    ranks = [ROLE_ORDER.index(name) for name in names if name in ROLE_ORDER]
    return max(ranks, default=-1)


def visibility_allows(user, visibility: str, kind: str = "agents") -> bool:
    """The user's role lets them use ``kind`` ("agents", "tools", "channels") of this visibility.

    An unknown visibility is treated as the strictest one.
    """
    if visibility not in VISIBILITIES:
        visibility = "admin"
    if kind == "channels" and visibility == "public":
        return True
    user_access(user)  # fills ModelBackend's caches on this user object: has_perm asks no query
    return user.has_perm(f"identities.use_{visibility}_{kind}")


def user_may_act(user) -> bool:
    """An active user, not blocked (blocked users are refused everywhere)."""
    return bool(user.is_active) and getattr(user, "blocked_at", None) is None


def staff_may_act(user) -> bool:
    """Signed-in staff who may act: the admin, the dashboards and the console refuse the rest (a
    blocked staff member keeps her session, but none of what it opened)."""
    return bool(user.is_authenticated and user.is_staff and user_may_act(user))


def _allowed(user, obj, kind: str, object_perm: str) -> bool:
    if not user_may_act(user):
        return False
    if visibility_allows(user, getattr(obj, "visibility", "admin"), kind):
        return True
    return user.has_perm(object_perm, obj)


def user_can_use_agent(user, agent) -> bool:
    return _allowed(user, agent, "agents", "agents.use_agent")


def user_can_use_tool(user, tool) -> bool:
    """Checked when a tool is about to run, whatever the model asked for."""
    return _allowed(user, tool, "tools", f"{tool._meta.app_label}.use_tool")


def user_can_use_channel(user, channel) -> bool:
    return _allowed(user, channel, "channels", "connectors.use_channel")


def usable_channel_ids(user) -> set[int]:
    """The ids of the channels ``user`` may use (``user_can_use_channel``'s rule), in a few queries
    whatever their number: the visibilities the role allows, and the channels granted one by one."""
    return _usable_ids(user, "connectors.Channel", "channels", "connectors.use_channel")


def usable_agent_ids(user) -> set[int]:
    """The ids of the agents ``user`` may use (``user_can_use_agent``'s rule), as usable_channel_ids."""
    return _usable_ids(user, "agents.Agent", "agents", "agents.use_agent")


def usable_tool_ids(user) -> set[int]:
    """The ids of the tools ``user`` may use (``user_can_use_tool``'s rule), as usable_channel_ids."""
    return _usable_ids(user, "agents.Tool", "tools", "agents.use_tool")


def _usable_ids(user, model: str, kind: str, object_perm: str) -> set[int]:
    from django.apps import apps
    from guardian.shortcuts import get_objects_for_user

    rows = apps.get_model(model).objects.all()
    if not user_may_act(user):
        return set()
    if user.is_superuser:
        return set(rows.values_list("pk", flat=True))
    allowed = [v for v in VISIBILITIES if visibility_allows(user, v, kind)]
    by_role = rows.filter(visibility__in=allowed)
    if "admin" in allowed:  # an unknown visibility counts as the strictest
        by_role = by_role | rows.exclude(visibility__in=VISIBILITIES)
    granted = get_objects_for_user(user, object_perm, klass=rows, accept_global_perms=False)
    return set(by_role.values_list("pk", flat=True)) | set(granted.values_list("pk", flat=True))


def api_key_scope(api_key) -> tuple[frozenset, frozenset]:
    """(channel ids, agent ids) the key is limited to; empty means any. Kept per process."""
    return cached("api_key_scope", api_key.pk, lambda: (
        frozenset(api_key.channels.values_list("pk", flat=True)),
        frozenset(api_key.agents.values_list("pk", flat=True)),
    ))


def api_key_allows_channel(api_key, channel) -> bool:
    """The key's channel scope (no channels listed: any)."""
    if api_key is None:
        return True
    scoped = api_key_scope(api_key)[0]
    return not scoped or channel.pk in scoped


def api_key_allows_agent(api_key, agent) -> bool:
    """The key's agent scope (no agents listed: any the owner may use)."""
    if api_key is None:
        return True
    scoped = api_key_scope(api_key)[1]
    return not scoped or agent.pk in scoped

"""The three roles, kept as Django Groups with real permissions.

A role is a ladder step: each role has the permissions of the one below it plus its own.
``ROLE_PERMISSIONS`` is the source of truth; ``seed_roles`` (and ``seed_demo``) apply it. Staff may
add permissions to a group in the admin; seeding only adds, it never takes one away.
"""
from __future__ import annotations

import logging

logger = logging.getLogger(__name__)


class Role:
    CUSTOMER = "customer"
    EMPLOYEE = "employee"
    ADMIN = "admin"


ROLE_ORDER = [Role.CUSTOMER, Role.EMPLOYEE, Role.ADMIN]

_CUSTOMER = [
    "identities.use_public_agents",
    "identities.use_public_tools",
]
_EMPLOYEE = [
    "identities.use_internal_agents",
    "identities.use_internal_tools",
    "identities.use_internal_channels",
]
_ADMIN = [
    # operational agents, tools and channels
    "identities.use_admin_agents",
    "identities.use_admin_tools",
    "identities.use_admin_channels",
    "identities.grant_role",
    "identities.block_user",
    "identities.merge_users",
    # the admin site, for admins who are also staff
    "identities.view_user", "identities.change_user",
    "identities.view_channelidentity", "identities.change_channelidentity",
    "identities.view_apikey", "identities.add_apikey", "identities.change_apikey",
    "auth.view_group",
    "agents.view_agent", "agents.change_agent",
    "connectors.view_channel", "connectors.change_channel",
    "guardian.view_userobjectpermission", "guardian.change_userobjectpermission",
    "guardian.view_groupobjectpermission", "guardian.change_groupobjectpermission",
    "logs.view_auditevent",
    "quotas.view_budgetalert",
]

ROLE_PERMISSIONS: dict[str, list[str]] = {
    Role.CUSTOMER: _CUSTOMER,
    Role.EMPLOYEE: _CUSTOMER + _EMPLOYEE,
    Role.ADMIN: _CUSTOMER + _EMPLOYEE + _ADMIN,
}


def ensure_role_groups():
    """Create the role groups if missing (with their permissions); returns {role name: Group}."""
    from django.contrib.auth.models import Group

    groups, created_any = {}, False
    for name in ROLE_ORDER:
        groups[name], created = Group.objects.get_or_create(name=name)
        created_any |= created
    if created_any:
        grant_role_permissions(groups)
    return groups


def grant_role_permissions(groups=None) -> dict[str, int]:
    """Add every permission of ``ROLE_PERMISSIONS`` to its group; returns {role: permissions added}.

    Permissions whose app is not installed (or whose model has not landed yet) are skipped.
    """
    from django.contrib.auth.models import Group, Permission
    from django.db.models import Q

    groups = groups or {name: Group.objects.get_or_create(name=name)[0] for name in ROLE_ORDER}
    wanted = {p for perms in ROLE_PERMISSIONS.values() for p in perms}
    query = Q(pk__in=[])
    for dotted in wanted:
        app_label, _, codename = dotted.partition(".")
        query |= Q(content_type__app_label=app_label, codename=codename)
    found = {
        f"{p.content_type.app_label}.{p.codename}": p
        for p in Permission.objects.filter(query).select_related("content_type")
    }
    if missing := wanted - found.keys():
        logger.info("role permissions not installed yet, skipped", extra={"missing": sorted(missing)})
    added = {}
    for role, perms in ROLE_PERMISSIONS.items():
        group = groups[role]
        have = set(group.permissions.values_list("pk", flat=True))
        new = [found[p] for p in perms if p in found and found[p].pk not in have]
        group.permissions.add(*new)
        added[role] = len(new)
    return added

"""What a user may use: agents, tools and channels, by role and by object permission.

Visibility ladder: ``public`` (customers and up), ``internal`` (employees and up), ``admin``.
Object permissions (django-guardian) grant single objects beyond the role (identities issue).
"""
from __future__ import annotations

from .roles import ROLE_ORDER, Role

VISIBILITY_MIN_ROLE = {"public": Role.CUSTOMER, "internal": Role.EMPLOYEE, "admin": Role.ADMIN}


def role_rank(user) -> int:
    """0 customer, 1 employee, 2 admin; -1 for a user in no role (an outsider)."""
    names = {g.name for g in user.groups.all()}
    ranks = [ROLE_ORDER.index(name) for name in names if name in ROLE_ORDER]
    return max(ranks, default=-1)


def visibility_allows(user, visibility: str) -> bool:
    needed = VISIBILITY_MIN_ROLE.get(visibility, Role.ADMIN)
    return role_rank(user) >= ROLE_ORDER.index(needed)


def user_can_use_agent(user, agent) -> bool:
    return user.is_active and visibility_allows(user, agent.visibility)


def user_can_use_tool(user, tool) -> bool:
    """Checked when a tool is about to run, whatever the model asked for."""
    return user.is_active and visibility_allows(user, tool.visibility)

"""The three roles, kept as Django Groups."""
from __future__ import annotations


class Role:
    CUSTOMER = "customer"
    EMPLOYEE = "employee"
    ADMIN = "admin"


ROLE_ORDER = [Role.CUSTOMER, Role.EMPLOYEE, Role.ADMIN]


def ensure_role_groups():
    """Create the role groups if missing; returns {role name: Group}."""
    from django.contrib.auth.models import Group

    return {name: Group.objects.get_or_create(name=name)[0] for name in ROLE_ORDER}

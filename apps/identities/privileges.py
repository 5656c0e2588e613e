"""The rule the admin applies to staff who are not superusers: act only on people who hold no more
than you do, and hand out only what you hold yourself.

"Hold" means global permissions (the user's own and their groups'), read fresh from the database
whether or not the account is active, plus the superuser flag: a superuser holds everything; and
object permissions (django-guardian, the user's own and their groups'): a ``use_*`` one is held by
whoever may use that object anyway. So an admin-role staff member can neither edit, merge, block,
set the password of, mint an API key for, nor move a channel identity onto a superuser (or anyone
holding a permission she lacks, globally or on one agent, tool or channel), nor give anyone a
group, a permission or the superuser flag beyond her own. Refusals are audited as ``admin.refused``.
"""
from __future__ import annotations

import logging

from django.contrib.auth.models import Permission
from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import Q

from apps.core.client_ip import client_ip_for_request
from apps.logs.services import audit

logger = logging.getLogger(__name__)


def held_permissions(user) -> set[str]:
    """``app.codename`` of every global permission ``user`` holds, directly or through a group."""
    if user.pk is None:
        return set()
    rows = (Permission.objects.filter(Q(user=user) | Q(group__user=user))
            .values_list("content_type__app_label", "codename").distinct())
    return {f"{app}.{codename}" for app, codename in rows}


def held_object_permissions(users) -> list[tuple[object, str]]:
    """(object, codename) of every object permission any of ``users`` (a queryset) holds, directly
    or through a group; those on objects deleted since are left out."""
    from guardian.models import GroupObjectPermission, UserObjectPermission

    return _granted([
        *UserObjectPermission.objects.filter(user__in=users).select_related("permission", "content_type"),
        *GroupObjectPermission.objects.filter(group__user__in=users).distinct().select_related("permission",
                                                                                               "content_type")])


def group_object_permissions(groups) -> list[tuple[object, str]]:
    """(object, codename) of every object permission the ``groups`` hold."""
    from guardian.models import GroupObjectPermission

    return _granted(GroupObjectPermission.objects.filter(group__in=[g.pk for g in groups])
                    .select_related("permission", "content_type"))


def _granted(rows) -> list[tuple[object, str]]:
    held = []
    for row in rows:
        try:
            obj = row.content_object
        except (AttributeError, ValueError, TypeError, ValidationError):
            # A grant on a model no longer installed, or naming no possible object: it grants nothing.
            logger.warning("object permission naming no object ignored", extra={"row": row.pk})
            continue
        if obj is not None:
            held.append((obj, row.permission.codename))
    return held


def actor_holds(actor, obj, codename: str) -> bool:
    """Whether ``actor`` holds ``codename`` on ``obj``, and so may hand it out."""
    from .permissions import user_can_use_agent, user_can_use_channel, user_can_use_tool

    if actor.is_superuser:
        return True
    can_use = {"use_agent": user_can_use_agent, "use_tool": user_can_use_tool, "use_channel": user_can_use_channel}
    if codename in can_use:
        return can_use[codename](actor, obj)
    dotted = f"{obj._meta.app_label}.{codename}"
    return actor.has_perm(dotted) or actor.has_perm(dotted, obj)


def permission_names(permissions) -> set[str]:
    return {f"{p.content_type.app_label}.{p.codename}" for p in permissions}


def outranks(target, actor) -> bool:
    """Whether ``target`` holds something ``actor`` does not (then ``actor`` may not act on them)."""
    if actor.is_superuser or target is None:
        return False
    if target.is_superuser:
        return True
    return _any_holds_more(type(target)._default_manager.filter(pk=target.pk), actor)


def group_outranks(group, actor) -> bool:
    """Whether ``group`` holds something ``actor`` does not, or has a member who does (then
    ``actor`` may not change it: emptying a role's group would leave its members hers). In a few
    queries however many members it has."""
    if actor.is_superuser:
        return False
    members = group.user_set.all()
    return bool(beyond(actor, groups=[group])) or members.filter(is_superuser=True).exists() or _any_holds_more(
        members, actor)


def _any_holds_more(users, actor) -> bool:
    """Whether any of ``users`` (a queryset) holds a global permission ``actor`` does not, or an
    object permission ``actor`` does not hold on that object (read fresh, active or not)."""
    held = Permission.objects.filter(Q(user=actor) | Q(group__user=actor))
    if Permission.objects.filter(Q(user__in=users) | Q(group__user__in=users)).exclude(pk__in=held).exists():
        return True
    return any(not actor_holds(actor, obj, codename) for obj, codename in held_object_permissions(users))


def beyond(actor, *, permissions=(), groups=()) -> set[str]:
    """What among ``permissions`` and the ``groups``' permissions, global and on objects, ``actor``
    does not hold."""
    if actor.is_superuser:
        return set()
    wanted = permission_names(Permission.objects.filter(pk__in=[p.pk for p in permissions])
                              .select_related("content_type"))
    wanted |= permission_names(Permission.objects.filter(group__in=[g.pk for g in groups])
                               .select_related("content_type"))
    lacking = wanted - held_permissions(actor)
    lacking |= {f"{codename} on a {obj._meta.verbose_name}" for obj, codename in group_object_permissions(groups)
                if not actor_holds(actor, obj, codename)}
    return lacking


def refused(request, *, what: str, target=None, **detail) -> None:
    """Audit a refused staff action (``admin.refused``)."""
    audit(action="admin.refused", actor=request.user, target=target, client_ip=client_ip_for_request(request),
          what=what, **detail)


def refuse(request, *, what: str, target=None, **detail):
    """Audit, then raise PermissionDenied (the admin answers 403)."""
    refused(request, what=what, target=target, **detail)
    raise PermissionDenied(f"You may not {what}: they hold more than you do.")


def grant_checked_form(form_class, request, *, groups_field="groups", permissions_field="user_permissions"):
    """``form_class`` refusing groups, permissions or the superuser flag its user does not hold."""
    actor = request.user

    class GrantChecked(form_class):
        def clean(self):
            cleaned = super().clean()
            if actor.is_superuser:
                return cleaned
            if cleaned.get("is_superuser") and "is_superuser" in self.changed_data:
                self.add_error(None, "Only a superuser can make another.")
                refused(request, what="grant superuser", target=self.instance if self.instance.pk else None)
            lacking = beyond(actor, permissions=cleaned.get(permissions_field) or (),
                             groups=cleaned.get(groups_field) or ())
            if lacking:
                self.add_error(None, "You can only give permissions you hold yourself; you do not hold: "
                               + ", ".join(sorted(lacking)) + ".")
                refused(request, what="grant permissions", target=self.instance if self.instance.pk else None,
                        permissions=sorted(lacking))
            return cleaned

    return GrantChecked

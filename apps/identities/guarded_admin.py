"""django-guardian's object-permission admin, permission-checked and audited.

Use ``ObjectPermissionsAdmin`` (or the mixin) for models that are granted one by one: agents,
tools, channels. Their change page gets an "Object permissions" button where staff give a user or
group e.g. ``use_agent`` on that one agent. The pages need guardian's own view/change permissions
(not just the right to edit the model), and every change writes a ``permission.changed`` audit event.
Staff who are not superusers may only add object permissions they hold themselves (``use_*``: they
may use that object; others: they hold it globally or on that object); refusals are audited.
"""
from __future__ import annotations

from django.contrib import admin
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.exceptions import ValidationError
from guardian.admin import (
    AdminGroupObjectPermissionsForm,
    AdminUserObjectPermissionsForm,
    ReinforcedGuardedModelAdminMixin,
)

from apps.core.client_ip import client_ip_for_request

from .privileges import actor_holds, group_outranks, outranks, refuse, refused
from .services import object_permission_set


def client_ip(request) -> str | None:
    # The one trusted-proxy-aware answer, so audit rows name the client, not the proxy.
    return client_ip_for_request(request)


def _audited(form_class, request, holder_attr: str):
    """A guardian form class whose save goes through ``object_permission_set`` (audited), and which
    refuses to add a permission the acting staff member does not hold."""

    class AuditedForm(form_class):
        def clean(self):
            cleaned = super().clean()
            added = set(cleaned.get(self.get_obj_perms_field_name()) or ()) - set(self.get_obj_perms_field_initial())
            lacking = sorted(p for p in added if not actor_holds(request.user, self.obj, p))
            if lacking:
                self.add_error(None, "You can only give permissions you hold yourself; you do not hold: "
                               + ", ".join(lacking) + ".")
                refused(request, what="grant object permissions", target=self.obj, permissions=lacking,
                        holder=str(getattr(self, holder_attr)))
            return cleaned

        def save_obj_perms(self) -> None:
            object_permission_set(
                holder=getattr(self, holder_attr), obj=self.obj,
                perms=set(self.cleaned_data[self.get_obj_perms_field_name()]),
                actor=request.user, client_ip=client_ip(request),
            )

    return AuditedForm


class ObjectPermissionsAdminMixin(ReinforcedGuardedModelAdminMixin):
    """Besides adding only what she holds, a staff member changes no object permissions of a user
    or group who holds more than she does (removing theirs would make them hers: privileges.py)."""

    def obj_perms_manage_user_view(self, request, object_pk, user_id):
        if request.method == "POST":
            target = _found(get_user_model(), user_id)
            if outranks(target, request.user):
                refuse(request, what="change their object permissions", target=target)
        return super().obj_perms_manage_user_view(request, object_pk, user_id)

    def obj_perms_manage_group_view(self, request, object_pk, group_id):
        if request.method == "POST":
            group = _found(Group, group_id)
            if group is not None and group_outranks(group, request.user):
                refuse(request, what="change this group's object permissions", target=group)
        return super().obj_perms_manage_group_view(request, object_pk, group_id)

    def get_obj_perms_manage_user_form(self, request):
        return _audited(AdminUserObjectPermissionsForm, request, "user")

    def get_obj_perms_manage_group_form(self, request):
        return _audited(AdminGroupObjectPermissionsForm, request, "group")


def _found(model, pk):
    """The row, or None when there is none (guardian's view then answers 404)."""
    try:
        return model.objects.filter(pk=pk).first()
    except (ValueError, TypeError, ValidationError):
        return None


class ObjectPermissionsAdmin(ObjectPermissionsAdminMixin, admin.ModelAdmin):
    pass

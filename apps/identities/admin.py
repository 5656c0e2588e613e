"""Staff manage people here: users and their roles, blocks and merges, channel identities, API keys.

Every action is permission-checked (``identities.grant_role``, ``block_user``, ``merge_users`` on top
of the usual model permissions) and every change writes an audit event.
"""
from __future__ import annotations

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.admin.utils import unquote
from django.contrib.auth.admin import GroupAdmin as BaseGroupAdmin
from django.contrib.auth.admin import UserAdmin as BaseUserAdmin
from django.contrib.auth.models import Group
from django.template.response import TemplateResponse

from apps.logs.services import audit

from .channel_scope import UsableChannelsOnly
from .guarded_admin import client_ip
from .models import ApiKey, ChannelIdentity, User
from .privileges import beyond, grant_checked_form, group_outranks, outranks, refuse, refused
from .roles import ROLE_ORDER, Role, ensure_role_groups
from .scoped_pickers import UsablePickers
from .services import (
    KeyNotRotated,
    api_key_describe,
    api_key_end_grace,
    api_key_revoke,
    api_key_rotate,
    identity_link,
    user_block,
    user_merge,
    user_set_role,
    user_unblock,
)

# Fields that decide what a user may do: only staff with identities.grant_role may change them,
# and only to what they hold themselves (privileges.py).
PRIVILEGE_FIELDS = ("groups", "user_permissions", "is_staff", "is_superuser")


def user_snapshot(user) -> dict:
    """What an audit event records about a user's privileges."""
    return {
        "groups": sorted(user.groups.values_list("name", flat=True)),
        "user_permissions": sorted(
            f"{app}.{code}" for app, code in user.user_permissions.values_list("content_type__app_label", "codename")
        ),
        "is_staff": user.is_staff, "is_superuser": user.is_superuser, "is_active": user.is_active,
    }


class ChannelIdentityInline(UsableChannelsOnly, admin.TabularInline):
    """The user's identities on channels the staff member may use; to move one to another person,
    open it (Channel identities)."""

    model = ChannelIdentity
    extra = 0
    fields = ("channel", "external_id", "display_name", "created_at")
    readonly_fields = fields
    show_change_link = True
    can_delete = False

    def has_add_permission(self, request, obj=None) -> bool:
        return False


class RoleFilter(admin.SimpleListFilter):
    title = "role"
    parameter_name = "role"

    def lookups(self, request, model_admin):
        return [(role, role) for role in ROLE_ORDER] + [("none", "no role (outsider)")]

    def queryset(self, request, queryset):
        if self.value() == "none":
            return queryset.exclude(groups__name__in=ROLE_ORDER)
        if self.value() in ROLE_ORDER:
            return queryset.filter(groups__name=self.value())
        return queryset


class BlockedFilter(admin.SimpleListFilter):
    title = "blocked"
    parameter_name = "blocked"

    def lookups(self, request, model_admin):
        return [("yes", "Blocked"), ("no", "Not blocked")]

    def queryset(self, request, queryset):
        if self.value() == "yes":
            return queryset.filter(blocked_at__isnull=False)
        if self.value() == "no":
            return queryset.filter(blocked_at__isnull=True)
        return queryset


@admin.register(User)
class UserAdmin(UsablePickers, BaseUserAdmin):
    list_display = ("username", "email", "first_name", "roles", "is_staff", "is_blocked", "is_active",
                    "is_visitor", "date_joined")
    list_filter = (RoleFilter, BlockedFilter, "is_staff", "is_active", "is_visitor", "groups")
    search_fields = ("username", "email", "first_name", "last_name", "identities__external_id",
                     "identities__display_name")
    inlines = [ChannelIdentityInline]
    fieldsets = BaseUserAdmin.fieldsets + (
        ("Gateway", {"fields": ("is_visitor", "blocked_at", "blocked_reason", "merged_into")}),
    )
    actions = ["make_customer", "make_employee", "make_admin", "block_users", "unblock_users", "merge_users"]

    @admin.display(description="roles")
    def roles(self, obj) -> str:
        return ", ".join(g.name for g in obj.groups.all() if g.name in ROLE_ORDER) or "—"

    @admin.display(description="blocked", boolean=True)
    def is_blocked(self, obj) -> bool:
        return obj.blocked_at is not None

    def get_queryset(self, request):
        return super().get_queryset(request).prefetch_related("groups")

    # --- who may do what ---

    def has_grant_role_permission(self, request) -> bool:
        return request.user.has_perm("identities.grant_role")

    def has_block_user_permission(self, request) -> bool:
        return request.user.has_perm("identities.block_user")

    def has_merge_users_permission(self, request) -> bool:
        return request.user.has_perm("identities.merge_users")

    def has_change_permission(self, request, obj=None) -> bool:
        # Someone holding more than you (a superuser, say) is read-only to you: no edit, no password.
        return super().has_change_permission(request, obj) and not outranks(obj, request.user)

    def has_delete_permission(self, request, obj=None) -> bool:
        return super().has_delete_permission(request, obj) and not outranks(obj, request.user)

    def get_form(self, request, obj=None, **kwargs):
        return grant_checked_form(super().get_form(request, obj, **kwargs), request)

    def changeform_view(self, request, object_id=None, form_url="", extra_context=None):
        if request.method == "POST" and object_id:
            target = self.get_object(request, unquote(object_id))
            if outranks(target, request.user):
                refuse(request, what="change this user", target=target)
        return super().changeform_view(request, object_id, form_url, extra_context)

    def user_change_password(self, request, id, form_url=""):
        target = self.get_object(request, unquote(id))
        if request.method == "POST" and outranks(target, request.user):
            refuse(request, what="set this user's password", target=target)
        response = super().user_change_password(request, id, form_url)
        if request.method == "POST" and target is not None and response.status_code == 302:
            audit(action="user.password_set", actor=request.user, target=target, client_ip=client_ip(request))
        return response

    def get_readonly_fields(self, request, obj=None):
        readonly = ["is_visitor", "blocked_at", "blocked_reason", "merged_into", "last_login", "date_joined"]
        if not self.has_grant_role_permission(request):
            readonly += PRIVILEGE_FIELDS
        elif not request.user.is_superuser:
            readonly.append("is_superuser")  # only a superuser makes another
        return readonly

    # --- audited saves ---

    def save_model(self, request, obj, form, change):
        request._user_before = user_snapshot(User.objects.get(pk=obj.pk)) if change else None
        super().save_model(request, obj, form, change)

    def save_related(self, request, form, formsets, change):
        super().save_related(request, form, formsets, change)
        before, after = getattr(request, "_user_before", None), user_snapshot(form.instance)
        if not change:
            audit(action="user.created", actor=request.user, target=form.instance, after=after,
                  client_ip=client_ip(request))
        elif before != after:
            audit(action="user.privileges_changed", actor=request.user, target=form.instance, before=before,
                  after=after, client_ip=client_ip(request))

    # --- actions ---

    def _outranked(self, request, users, what: str) -> bool:
        """True (refused, audited, told) when any of ``users`` holds more than the acting staff."""
        above = [u for u in users if outranks(u, request.user)]
        for user in above:
            refused(request, what=what, target=user)
        if above:
            self.message_user(request, f"Refused: {', '.join(u.username for u in above)} hold(s) more than you "
                              "do. Nothing was changed.", messages.ERROR)
        return bool(above)

    def _set_role(self, request, queryset, role: str) -> None:
        if self._outranked(request, queryset, f"give the role {role}"):
            return
        if lacking := beyond(request.user, groups=[ensure_role_groups()[role]]):
            refused(request, what=f"give the role {role}", permissions=sorted(lacking))
            self.message_user(request, f"Refused: the role {role} holds permissions you do not.", messages.ERROR)
            return
        for user in queryset:
            user_set_role(user=user, role=role, actor=request.user, client_ip=client_ip(request))
        self.message_user(request, f"{queryset.count()} user(s) now have the role {role}.", messages.SUCCESS)

    @admin.action(description="Make the selected users customers", permissions=["grant_role"])
    def make_customer(self, request, queryset):
        self._set_role(request, queryset, Role.CUSTOMER)

    @admin.action(description="Make the selected users employees", permissions=["grant_role"])
    def make_employee(self, request, queryset):
        self._set_role(request, queryset, Role.EMPLOYEE)

    @admin.action(description="Make the selected users admins", permissions=["grant_role"])
    def make_admin(self, request, queryset):
        self._set_role(request, queryset, Role.ADMIN)

    @admin.action(description="Block the selected users (refused on every channel)", permissions=["block_user"])
    def block_users(self, request, queryset):
        if self._outranked(request, queryset, "block this user"):
            return
        targets = [u for u in queryset if u.pk != request.user.pk and not u.is_superuser]
        for user in targets:
            user_block(user=user, actor=request.user, reason="blocked by staff in the admin",
                       client_ip=client_ip(request))
        skipped = queryset.count() - len(targets)
        self.message_user(request, f"Blocked {len(targets)} user(s)"
                          + (f"; skipped {skipped} (yourself or a superuser)." if skipped else "."))

    @admin.action(description="Unblock the selected users", permissions=["block_user"])
    def unblock_users(self, request, queryset):
        if self._outranked(request, queryset, "unblock this user"):
            return
        for user in queryset.filter(blocked_at__isnull=False):
            user_unblock(user=user, actor=request.user, client_ip=client_ip(request))
        self.message_user(request, "Unblocked.")

    @admin.action(description="Merge the selected users into one…", permissions=["merge_users"])
    def merge_users(self, request, queryset):
        users = list(queryset.order_by("date_joined"))
        if len(users) < 2:
            self.message_user(request, "Select at least two users to merge.", messages.WARNING)
            return None
        if self._outranked(request, users, "merge this user"):
            return None
        if "apply" in request.POST:
            survivor = next((u for u in users if str(u.pk) == request.POST.get("survivor")), None)
            if survivor is None:
                self.message_user(request, "Choose the user who remains.", messages.ERROR)
                return None
            for merged in users:
                if merged.pk != survivor.pk:
                    user_merge(survivor=survivor, merged=merged, actor=request.user, client_ip=client_ip(request))
            self.message_user(request, f"Merged {len(users) - 1} user(s) into {survivor}.", messages.SUCCESS)
            return None
        return TemplateResponse(request, "admin/identities/user/merge.html", {
            **self.admin_site.each_context(request),
            "title": "Merge users", "opts": self.model._meta, "users": users,
            "action_checkbox_name": ACTION_CHECKBOX_NAME,
        })


@admin.register(ChannelIdentity)
class ChannelIdentityAdmin(UsablePickers, UsableChannelsOnly, admin.ModelAdmin):
    """Linking: change an identity's user to say it is the same person as another account. Staff
    find only the identities on channels they may use (who spoke there is part of what was said)."""

    list_display = ("external_id", "channel", "user", "display_name", "created_at")
    list_filter = ("channel",)
    search_fields = ("external_id", "display_name", "user__username", "user__email")
    list_select_related = ("channel", "user")
    autocomplete_fields = ("user",)

    def has_change_permission(self, request, obj=None) -> bool:
        # An identity of someone holding more than you is read-only: moving it is a takeover.
        return super().has_change_permission(request, obj) and not outranks(obj and obj.user, request.user)

    def get_form(self, request, obj=None, **kwargs):
        form_class = super().get_form(request, obj, **kwargs)

        class OwnerChecked(form_class):
            def clean_user(self):
                user = self.cleaned_data.get("user")
                if outranks(user, request.user):
                    refused(request, what="move an identity to this user", target=user)
                    raise forms.ValidationError("This user holds more than you do: you cannot give them "
                                                "an identity (whoever holds it would speak as them).")
                return user

        return OwnerChecked

    def changeform_view(self, request, object_id=None, form_url="", extra_context=None):
        if request.method == "POST" and object_id:
            identity = self.get_object(request, unquote(object_id))
            if identity is not None and outranks(identity.user, request.user):
                refuse(request, what="change this user's identity", target=identity)
        return super().changeform_view(request, object_id, form_url, extra_context)

    def get_readonly_fields(self, request, obj=None):
        if obj is not None:
            readonly = ["channel", "external_id", "created_at"]
            if not request.user.has_perm("identities.merge_users"):
                readonly.append("user")
            return readonly
        return ["created_at"]

    def save_model(self, request, obj, form, change):
        if change and "user" in form.changed_data:
            new_user = obj.user
            obj.user_id = form.initial["user"]
            identity_link(identity=obj, user=new_user, actor=request.user, client_ip=client_ip(request))
            if form.changed_data != ["user"]:
                super().save_model(request, obj, form, change)
            return
        super().save_model(request, obj, form, change)
        if not change:
            audit(action="identity.created", actor=request.user, target=obj, client_ip=client_ip(request),
                  after={"user": str(obj.user_id), "channel": obj.channel.slug, "external_id": obj.external_id})


class RotateKeyForm(forms.Form):
    grace_hours = forms.FloatField(
        min_value=0, max_value=settings.GATEWAY_API_KEY_ROTATION_MAX_GRACE_SECONDS / 3600,
        initial=settings.GATEWAY_API_KEY_ROTATION_GRACE_SECONDS / 3600,
        help_text="How long the old secret keeps working, so clients can move to the new one (0: it stops now).")


@admin.register(ApiKey)
class ApiKeyAdmin(UsablePickers, admin.ModelAdmin):
    """A new key is shown once, on the page after it is created; only its hash is kept.

    Keys are never deleted (revoke them: the history stays); scopes, name and expiry can change.
    Rotating one gives it a new secret, shown once likewise; the old one works for a grace period.
    """

    list_display = ("masked", "name", "user", "created_at", "last_used_at", "expires_at", "revoked_at")
    list_filter = ("revoked_at", "expires_at", "channels", "agents")
    search_fields = ("prefix", "name", "user__username", "user__email")
    list_select_related = ("user",)
    autocomplete_fields = ("user",)
    filter_horizontal = ("channels", "agents")
    actions = ["revoke_keys", "rotate_keys", "end_grace"]

    def get_fields(self, request, obj=None):
        if obj is None:
            return ("user", "name", "expires_at", "channels", "agents")
        return ("masked", "previous_secret", "user", "name", "created_at", "last_used_at", "expires_at",
                "revoked_at", "channels", "agents")

    def get_readonly_fields(self, request, obj=None):
        if obj is None:
            return ()
        return ("masked", "previous_secret", "user", "created_at", "last_used_at", "revoked_at")

    @admin.display(description="key")
    def masked(self, obj) -> str:
        return obj.masked

    @admin.display(description="previous secret")
    def previous_secret(self, obj) -> str:
        """Whether the secret the last rotation replaced still works, and until when (its prefix only)."""
        if not obj.previous_prefix or obj.previous_valid_until is None:
            return "-"
        old, until = f"gw_{obj.previous_prefix}_…", f"{obj.previous_valid_until:%Y-%m-%d %H:%M} UTC"
        if not obj.is_usable:
            return f"{old} refused: this key is revoked or expired"
        if obj.previous_secret_accepted:
            return f"{old} still accepted until {until}; {obj.previous_secret_use}"
        return f"{old} no longer accepted (since {until}); {obj.previous_secret_use}"

    def has_change_permission(self, request, obj=None) -> bool:
        return super().has_change_permission(request, obj) and not outranks(obj and obj.user, request.user)

    def get_form(self, request, obj=None, **kwargs):
        form_class = super().get_form(request, obj, **kwargs)

        class OwnerChecked(form_class):
            def clean_user(self):
                user = self.cleaned_data.get("user")
                if outranks(user, request.user):
                    refused(request, what="create an API key for this user", target=user)
                    raise forms.ValidationError("This user holds more than you do: whoever holds a key in "
                                                "their name would act as them.")
                return user

        return OwnerChecked

    def has_delete_permission(self, request, obj=None) -> bool:
        return False

    def save_model(self, request, obj, form, change):
        if change:
            request._key_before = api_key_describe(ApiKey.objects.get(pk=obj.pk))
        else:
            request._raw_api_key = obj.set_new_secret()
        super().save_model(request, obj, form, change)

    def save_related(self, request, form, formsets, change):
        super().save_related(request, form, formsets, change)
        after = api_key_describe(form.instance)
        if not change:
            audit(action="apikey.created", actor=request.user, target=form.instance, after=after,
                  client_ip=client_ip(request))
        elif (before := getattr(request, "_key_before", None)) != after:
            audit(action="apikey.changed", actor=request.user, target=form.instance, before=before, after=after,
                  client_ip=client_ip(request))

    def response_add(self, request, obj, post_url_continue=None):
        """Show the raw key on this one page (not in a message, which would sit in a cookie)."""
        raw_key = getattr(request, "_raw_api_key", None)
        if raw_key is None:
            return super().response_add(request, obj, post_url_continue)
        return TemplateResponse(request, "admin/identities/apikey/created.html", {
            **self.admin_site.each_context(request),
            "title": "API key created", "opts": self.model._meta, "key": obj, "raw_key": raw_key,
        }, headers={"Cache-Control": "no-store"})

    @admin.action(description="Revoke the selected keys", permissions=["change"])
    def revoke_keys(self, request, queryset):
        above = [key for key in queryset.select_related("user") if outranks(key.user, request.user)]
        if above:
            for key in above:
                refused(request, what="revoke this key", target=key)
            self.message_user(request, "Refused: some keys belong to users who hold more than you.", messages.ERROR)
            return
        for key in queryset.filter(revoked_at__isnull=True):
            api_key_revoke(key=key, actor=request.user, client_ip=client_ip(request))
        self.message_user(request, "Revoked.")

    @admin.action(description="Stop accepting the old secrets of the selected keys now", permissions=["change"])
    def end_grace(self, request, queryset):
        """End the grace period of rotated keys whose clients have moved to the new secret (the
        "previous secret" field tells when the old one was last used), or whose old secret leaked."""
        keys = list(queryset.select_related("user"))
        above = [key for key in keys if outranks(key.user, request.user)]
        if above:
            for key in above:
                refused(request, what="end the grace period of this key", target=key)
            self.message_user(request, "Refused: some keys belong to users who hold more than you.", messages.ERROR)
            return
        ended = [key.masked for key in keys if api_key_end_grace(key=key, actor=request.user,
                                                                    client_ip=client_ip(request))]
        if ended:
            self.message_user(request, f"The old secret is no longer accepted for {', '.join(ended)}.")
        else:
            self.message_user(request, "None of the selected keys had an old secret still accepted.",
                              messages.WARNING)

    @admin.action(description="Rotate the selected key (new secret, shown once)…", permissions=["change"])
    def rotate_keys(self, request, queryset):
        """One key at a time: ask for the grace period, then show the new key once (as on creation)."""
        keys = list(queryset.select_related("user")[:2])
        if len(keys) != 1:
            self.message_user(request, "Select one key to rotate.", messages.WARNING)
            return None
        key = keys[0]
        if outranks(key.user, request.user):
            refused(request, what="rotate this key", target=key)
            self.message_user(request, "Refused: this key belongs to a user who holds more than you.", messages.ERROR)
            return None
        if not key.is_usable:
            self.message_user(request, f"{key.masked} is revoked or expired: it cannot be rotated.", messages.ERROR)
            return None
        form = RotateKeyForm(request.POST if "apply" in request.POST else None)
        if form.is_valid():
            grace_seconds = round(form.cleaned_data["grace_hours"] * 3600)
            try:
                raw_key = api_key_rotate(key=key, actor=request.user, grace_seconds=grace_seconds,
                                         client_ip=client_ip(request))
            except KeyNotRotated as refusal:
                self.message_user(request, str(refusal), messages.ERROR)
                return None
            # The raw key on this one page only, as on creation (never in a message: it sits in a cookie).
            return TemplateResponse(request, "admin/identities/apikey/created.html", {
                **self.admin_site.each_context(request),
                "title": "API key rotated", "opts": self.model._meta, "key": key, "raw_key": raw_key, "rotated": True,
            }, headers={"Cache-Control": "no-store"})
        return TemplateResponse(request, "admin/identities/apikey/rotate.html", {
            **self.admin_site.each_context(request),
            "title": "Rotate an API key", "opts": self.model._meta, "key": key, "form": form,
            "action_checkbox_name": ACTION_CHECKBOX_NAME,
        })


admin.site.unregister(Group)


@admin.register(Group)
class GroupAdmin(UsablePickers, BaseGroupAdmin):
    """Role groups and other groups; changing a group's permissions is audited."""

    def save_model(self, request, obj, form, change):
        request._group_before = sorted(obj.permissions.values_list("codename", flat=True)) if change else []
        super().save_model(request, obj, form, change)

    def save_related(self, request, form, formsets, change):
        super().save_related(request, form, formsets, change)
        after = sorted(form.instance.permissions.values_list("codename", flat=True))
        if after != request._group_before:
            audit(action="group.permissions_changed", actor=request.user, target=form.instance,
                  before={"permissions": request._group_before}, after={"permissions": after},
                  client_ip=client_ip(request))

    def get_form(self, request, obj=None, **kwargs):
        return grant_checked_form(super().get_form(request, obj, **kwargs), request, groups_field="-",
                              permissions_field="permissions")

    def has_change_permission(self, request, obj=None) -> bool:
        # A group holding more than the staff member, or with a member who does, is read-only to her.
        return (super().has_change_permission(request, obj) and request.user.has_perm("identities.grant_role")
                and not (obj is not None and group_outranks(obj, request.user)))

    def has_delete_permission(self, request, obj=None) -> bool:
        return super().has_delete_permission(request, obj) and not (obj is not None and not request.user.is_superuser
                                                                    and (obj.name in ROLE_ORDER
                                                                         or group_outranks(obj, request.user)))

    def get_readonly_fields(self, request, obj=None):
        # The roles are found by their groups' names (roles.py): only a superuser renames one.
        if obj is not None and obj.name in ROLE_ORDER and not request.user.is_superuser:
            return ("name",)
        return ()

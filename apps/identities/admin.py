from django.contrib import admin
from django.contrib.auth.admin import UserAdmin as BaseUserAdmin

from .models import ApiKey, ChannelIdentity, User


class ChannelIdentityInline(admin.TabularInline):
    model = ChannelIdentity
    extra = 0
    fields = ("channel", "external_id", "display_name", "created_at")
    readonly_fields = ("created_at",)


@admin.register(User)
class UserAdmin(BaseUserAdmin):
    list_display = ("username", "email", "first_name", "is_active", "is_staff", "is_visitor", "date_joined")
    list_filter = ("is_active", "is_staff", "is_visitor", "groups")
    search_fields = ("username", "email", "first_name", "last_name", "identities__external_id")
    inlines = [ChannelIdentityInline]
    fieldsets = BaseUserAdmin.fieldsets + (("Gateway", {"fields": ("is_visitor",)}),)


@admin.register(ChannelIdentity)
class ChannelIdentityAdmin(admin.ModelAdmin):
    list_display = ("external_id", "channel", "user", "display_name", "created_at")
    list_filter = ("channel",)
    search_fields = ("external_id", "display_name", "user__username", "user__email")
    list_select_related = ("channel", "user")
    autocomplete_fields = ("user",)


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    """Keys are created with `create_api_key` (the secret is printed once); here they are only
    inspected, named, given an expiry or revoked. The hash is never shown."""

    list_display = ("masked", "name", "user", "created_at", "last_used_at", "expires_at", "revoked_at")
    list_filter = ("revoked_at", "expires_at")
    search_fields = ("prefix", "name", "user__username")
    list_select_related = ("user",)
    fields = ("masked", "user", "name", "created_at", "last_used_at", "expires_at", "revoked_at")
    readonly_fields = ("masked", "user", "created_at", "last_used_at")

    @admin.display(description="key")
    def masked(self, obj) -> str:
        return f"gw_{obj.prefix}_…"

    def has_add_permission(self, request) -> bool:
        return False

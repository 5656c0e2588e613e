from django.contrib import admin

from .models import Channel


@admin.register(Channel)
class ChannelAdmin(admin.ModelAdmin):
    list_display = ("slug", "name", "kind", "enabled", "default_agent", "allow_visitors", "created_at")
    list_filter = ("kind", "enabled")
    search_fields = ("slug", "name")
    list_select_related = ("default_agent",)
    prepopulated_fields = {"slug": ("name",)}

"""The admin site, refusing staff who may not act (blocked, as well as inactive)."""
from django.contrib import admin
from django.contrib.admin.apps import AdminConfig


class GatewayAdminSite(admin.AdminSite):
    def has_permission(self, request) -> bool:
        from .permissions import staff_may_act

        return staff_may_act(request.user)


class GatewayAdminConfig(AdminConfig):
    """``INSTALLED_APPS``' entry for the admin: ``admin.site`` is a GatewayAdminSite."""

    default_site = "apps.identities.admin_site.GatewayAdminSite"

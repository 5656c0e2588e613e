"""The admin site, refusing staff who may not act (blocked, as well as inactive)."""
import functools

from django.contrib import admin
from django.contrib.admin.apps import AdminConfig
from django.core.exceptions import ValidationError
from django.http import HttpResponseBadRequest


class GatewayAdminSite(admin.AdminSite):
    def has_permission(self, request) -> bool:
        from .permissions import staff_may_act

        return staff_may_act(request.user)

    def admin_view(self, view, cacheable=False):
        """Every admin page, refusing a query with a NUL character (400): a list filter's value
        ends up in SQL, and PostgreSQL refuses a NUL in text (a 500). A value Django's own views
        let through to a lookup that refuses it (an action's selected id that is no UUID) is a 400
        too, not a 500."""
        guarded = super().admin_view(view, cacheable)

        @functools.wraps(guarded)
        def inner(request, *args, **kwargs):
            if any("\x00" in part for key, values in request.GET.lists() for part in (key, *values)):
                return HttpResponseBadRequest("The query holds a NUL character.")
            try:
                return guarded(request, *args, **kwargs)
            except ValidationError as error:
                # Plain text: the message quotes the value posted, which may hold markup.
                return HttpResponseBadRequest(f"Not a value this page can use: {'; '.join(error.messages)[:200]}",
                                              content_type="text/plain; charset=utf-8")

        return inner


class GatewayAdminConfig(AdminConfig):
    """``INSTALLED_APPS``' entry for the admin: ``admin.site`` is a GatewayAdminSite."""

    default_site = "apps.identities.admin_site.GatewayAdminSite"

"""Django's own middleware, without a thread hop per hook when served by Daphne.

Under ASGI, Django's ``MiddlewareMixin`` runs every ``process_request`` and ``process_response``
on a thread (``sync_to_async``), so the seven middlewares of settings.MIDDLEWARE cost about a dozen
thread hops per request: more CPU than the gateway's own work on an accepted message. Two remedies,
each for middleware where it is safe:

- ``InlineHooksMixin``: hooks that do no I/O (security headers, APPEND_SLASH, X-Frame-Options) run
  on the event loop.
- ``BrowserOnlyMixin``: sessions, CSRF, the session's user and flash messages serve the browser
  pages (admin, dashboard, chat page). API, webhook and probe paths authenticate every request by
  API key or signature and read no cookie, so there these step aside.

The synchronous path (the test client, any WSGI server) is Django's, unchanged.
"""
from __future__ import annotations

from asgiref.sync import iscoroutinefunction, sync_to_async
from django.contrib.auth.middleware import AuthenticationMiddleware as DjangoAuthenticationMiddleware
from django.contrib.messages.middleware import MessageMiddleware as DjangoMessageMiddleware
from django.contrib.sessions.middleware import SessionMiddleware as DjangoSessionMiddleware
from django.middleware.clickjacking import XFrameOptionsMiddleware as DjangoXFrameOptionsMiddleware
from django.middleware.common import CommonMiddleware as DjangoCommonMiddleware
from django.middleware.csrf import CsrfViewMiddleware as DjangoCsrfViewMiddleware
from django.middleware.security import SecurityMiddleware as DjangoSecurityMiddleware

# Paths served to programs, not browsers: no session, no cookie authority, no flash messages.
NO_BROWSER_STATE_PREFIXES = ("/api/", "/v1/", "/healthz", "/readyz", "/metrics")


def serves_programs(path: str) -> bool:
    return path.startswith(NO_BROWSER_STATE_PREFIXES)


class InlineHooksMixin:
    """Async mode: call this middleware's hooks on the event loop (they must do no I/O)."""

    async def __acall__(self, request):
        response = self.process_request(request) if hasattr(self, "process_request") else None
        response = response or await self.get_response(request)
        if hasattr(self, "process_response"):
            response = self.process_response(request, response)
        return response


class BrowserOnlyMixin:
    """Async mode: skip this middleware on paths that serve programs (see serves_programs)."""

    async def __acall__(self, request):
        if serves_programs(request.path_info):
            return await self.get_response(request)
        return await super().__acall__(request)


class SecurityMiddleware(InlineHooksMixin, DjangoSecurityMiddleware):
    pass


class CommonMiddleware(InlineHooksMixin, DjangoCommonMiddleware):
    pass


class XFrameOptionsMiddleware(InlineHooksMixin, DjangoXFrameOptionsMiddleware):
    pass


class SessionMiddleware(BrowserOnlyMixin, DjangoSessionMiddleware):
    pass


class CsrfViewMiddleware(BrowserOnlyMixin, DjangoCsrfViewMiddleware):
    def __init__(self, get_response):
        super().__init__(get_response)
        if iscoroutinefunction(get_response):
            # Async mode: Django would wrap a sync process_view in a thread hop for every request.
            self.process_view = self._aprocess_view

    async def _aprocess_view(self, request, callback, callback_args, callback_kwargs):
        if serves_programs(request.path_info):
            return None  # no session there, so no cookie authority to forge requests with
        return await sync_to_async(super().process_view)(request, callback, callback_args, callback_kwargs)


class AuthenticationMiddleware(BrowserOnlyMixin, DjangoAuthenticationMiddleware):
    pass


class MessageMiddleware(BrowserOnlyMixin, DjangoMessageMiddleware):
    pass

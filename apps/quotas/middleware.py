"""IP rules and the login guard on the browser pages (admin, dashboards, the web chat page, the API docs).

The programs' entry points check their own rules where they know their channel (the API views
before authentication, the webhook view before reading the body, the web chat socket at connect).
The pages served to people have no channel: the global rules apply to them here, before the
session is even read. The admin login form also counts failed logins per client address: past
GATEWAY_ADMIN_LOGIN_FAILURES_PER_IP within GATEWAY_AUTH_FAILURE_WINDOW_SECONDS, every login from
that address (right password or wrong) is refused with 429 until the window ends. Failures and
the block are audit events (``admin.login_failed``, ``admin.login_blocked``). With the shared
cache unreachable the guard counts nothing (fails open, like request rates): staff can still sign in.
"""
from __future__ import annotations

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.conf import settings
from django.core.cache import cache
from django.urls import reverse

from apps.core.client_ip import client_ip_for_request
from apps.core.errors import GatewayError, RateLimited, error_response
from apps.logs.services import audit
from gateway_project.db import database_sync_to_async

from .iprules import check_ip_rules
from .metrics import count_backend_error

BROWSER_PREFIXES = ("/admin/", "/dashboard/", "/chat/", "/api/v1/schema", "/api/v1/docs")
LOGIN_FAILURES_KEY = "gateway:adminlogin:"


def _login_failures_key(client_ip: str | None) -> str:
    return f"{LOGIN_FAILURES_KEY}{client_ip or 'unknown'}"


def _is_login_post(request) -> bool:
    return request.method == "POST" and request.path_info == reverse("admin:login")


def guard_browser_request(request):
    """A refusal response for this page request, or None to let it through."""
    client_ip = client_ip_for_request(request)
    try:
        check_ip_rules(client_ip)
        if _is_login_post(request):
            failures = _failures(client_ip)
            if failures >= settings.GATEWAY_ADMIN_LOGIN_FAILURES_PER_IP:
                raise RateLimited("Too many failed sign-ins from this address; try again later.",
                                  retry_after=settings.GATEWAY_AUTH_FAILURE_WINDOW_SECONDS)
    except GatewayError as error:
        return error_response(error)
    return None


def _failures(client_ip: str | None) -> int:
    try:
        return cache.get(_login_failures_key(client_ip)) or 0
    except Exception as exc:  # the cache's connection errors (Redis down): staff can still sign in
        count_backend_error("admin_login", "open", exc)
        return 0


def record_login_outcome(request, response) -> None:
    """Count a failed admin login (the form shown again, 200) and audit it, and the block."""
    if not _is_login_post(request) or response.status_code != 200:
        return
    client_ip = client_ip_for_request(request)
    key = _login_failures_key(client_ip)
    window = settings.GATEWAY_AUTH_FAILURE_WINDOW_SECONDS
    try:
        cache.add(key, 0, timeout=window)
        try:
            failures = cache.incr(key)
        except ValueError:  # expired between add and incr
            cache.set(key, 1, timeout=window)
            failures = 1
    except Exception as exc:  # Redis down: the failure is still audited, not counted
        count_backend_error("admin_login", "open", exc)
        failures = 0
    username = str(request.POST.get("username", ""))[:150]
    audit(action="admin.login_failed", client_ip=client_ip, username=username, failures=failures)
    if failures == settings.GATEWAY_ADMIN_LOGIN_FAILURES_PER_IP:
        audit(action="admin.login_blocked", client_ip=client_ip, failures=failures, window_seconds=window)


class BrowserGuardMiddleware:
    """Global IP rules and the admin login guard on BROWSER_PREFIXES; other paths pass untouched
    (and, under Daphne, without a thread hop)."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response):
        self.get_response = get_response
        if iscoroutinefunction(get_response):
            markcoroutinefunction(self)

    def __call__(self, request):
        if iscoroutinefunction(self):
            return self.__acall__(request)
        if not request.path_info.startswith(BROWSER_PREFIXES):
            return self.get_response(request)
        refusal = guard_browser_request(request)
        if refusal is not None:
            return refusal
        response = self.get_response(request)
        record_login_outcome(request, response)
        return response

    async def __acall__(self, request):
        if not request.path_info.startswith(BROWSER_PREFIXES):
            return await self.get_response(request)
        refusal = await database_sync_to_async(guard_browser_request)(request)
        if refusal is not None:
            return refusal
        response = await self.get_response(request)
        if _is_login_post(request):
            await database_sync_to_async(record_login_outcome)(request, response)
        return response

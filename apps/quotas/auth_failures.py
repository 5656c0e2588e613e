"""Brute-force protection for API keys: failed authentications are counted per client IP.

Past GATEWAY_AUTH_FAILURES_PER_IP failures within GATEWAY_AUTH_FAILURE_WINDOW_SECONDS, every
authentication attempt from that IP (right key or wrong) is refused with 429 until the window ends,
so guessing keys costs the attacker the window each time. The counter lives in the shared cache
(Redis in services mode): every Daphne process sees the same count. Failures and the block are
audited (AuditEvent ``apikey.auth_failed`` / ``apikey.auth_blocked``).
"""
from __future__ import annotations

from django.conf import settings
from django.core.cache import cache

from apps.conversations.errors import RateLimited

KEY_PREFIX = "gateway:authfail:"


def _key(client_ip: str | None) -> str:
    return f"{KEY_PREFIX}{client_ip or 'unknown'}"


def check_auth_failures(client_ip: str | None) -> None:
    """Raise RateLimited if ``client_ip`` is over its failed-authentication budget."""
    failures = cache.get(_key(client_ip)) or 0
    if failures >= settings.GATEWAY_AUTH_FAILURES_PER_IP:
        raise RateLimited(
            "Too many failed authentication attempts from this address; try again later.",
            retry_after=settings.GATEWAY_AUTH_FAILURE_WINDOW_SECONDS,
        )


def record_auth_failure(client_ip: str | None, *, reason: str) -> None:
    """Count one failure for ``client_ip`` and audit it (and the block, when this one reaches it)."""
    from apps.logs.services import audit

    key = _key(client_ip)
    cache.add(key, 0, timeout=settings.GATEWAY_AUTH_FAILURE_WINDOW_SECONDS)
    try:
        failures = cache.incr(key)
    except ValueError:  # expired between add and incr
        cache.set(key, 1, timeout=settings.GATEWAY_AUTH_FAILURE_WINDOW_SECONDS)
        failures = 1
    audit(action="apikey.auth_failed", client_ip=client_ip, reason=reason[:200], failures=failures)
    if failures == settings.GATEWAY_AUTH_FAILURES_PER_IP:
        audit(action="apikey.auth_blocked", client_ip=client_ip, failures=failures,
              window_seconds=settings.GATEWAY_AUTH_FAILURE_WINDOW_SECONDS)

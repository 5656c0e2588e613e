"""Brute-force protection for API keys: failed authentications are counted per client address and
per key prefix, in the shared cache (Redis in services mode: every Daphne process sees the same counts).

What is locked, and why:
- an **address** past GATEWAY_AUTH_FAILURES_PER_IP failures within GATEWAY_AUTH_FAILURE_WINDOW_SECONDS:
  every attempt from it is refused with 429 until the window ends (before the key is looked at), so
  guessing costs the guesser the window;
- a **key prefix** past GATEWAY_AUTH_FAILURES_PER_KEY failures naming it (wrong secret, revoked or
  expired key), from any number of addresses: every attempt with that prefix is refused the same way.
  This catches a guess spread over many addresses, which no per-address count sees;
- **except** a key that has authenticated from that very address within
  GATEWAY_AUTH_KNOWN_GOOD_SECONDS: it is still checked normally. Behind a proxy that is not in
  GATEWAY_TRUSTED_PROXIES every client shares the proxy's address, and a per-address lock alone would
  lock everyone out because of one guesser; with this exception the guesser is locked out and the
  clients already working from there are not. A guesser cannot earn the exception: it takes a
  successful authentication with that very key.
Failures and the locks are audited (AuditEvent ``apikey.auth_failed`` / ``apikey.auth_blocked``).
"""
from __future__ import annotations

import time

from django.conf import settings
from django.core.cache import cache

from apps.core.errors import RateLimited
from apps.logs.services import audit

KEY_PREFIX = "gateway:authfail:"
KNOWN_GOOD_WRITE_EVERY_SECONDS = 60.0  # per process: refresh a known-good mark at most this often
_known_good_written: dict[tuple[str, str], float] = {}


def _ip_key(client_ip: str | None) -> str:
    return f"{KEY_PREFIX}ip:{client_ip or 'unknown'}"


def _prefix_key(key_prefix: str) -> str:
    return f"{KEY_PREFIX}key:{key_prefix}"


def _good_key(client_ip: str | None, key_prefix: str) -> str:
    return f"{KEY_PREFIX}good:{client_ip or 'unknown'}:{key_prefix}"


def check_auth_failures(client_ip: str | None, key_prefix: str | None = None) -> None:
    """Raise RateLimited if ``client_ip`` or ``key_prefix`` is locked and this key has not worked
    from this address lately. One cache round trip when nothing is locked."""
    keys = [_ip_key(client_ip)] + ([_prefix_key(key_prefix)] if key_prefix else [])
    counts = cache.get_many(keys)
    ip_locked = (counts.get(keys[0]) or 0) >= settings.GATEWAY_AUTH_FAILURES_PER_IP
    prefix_locked = bool(key_prefix) and (counts.get(keys[-1]) or 0) >= settings.GATEWAY_AUTH_FAILURES_PER_KEY
    if not (ip_locked or prefix_locked):
        return
    if key_prefix and cache.get(_good_key(client_ip, key_prefix)):
        return  # this key has worked from here: check it as usual
    raise RateLimited(
        "Too many failed authentication attempts from this address or with this key; try again later.",
        retry_after=settings.GATEWAY_AUTH_FAILURE_WINDOW_SECONDS,
    )


def _count(key: str) -> int:
    cache.add(key, 0, timeout=settings.GATEWAY_AUTH_FAILURE_WINDOW_SECONDS)
    try:
        return cache.incr(key)
    except ValueError:  # expired between add and incr
        cache.set(key, 1, timeout=settings.GATEWAY_AUTH_FAILURE_WINDOW_SECONDS)
        return 1


def record_auth_failure(client_ip: str | None, *, reason: str, key_prefix: str | None = None) -> None:
    """Count one failure for ``client_ip`` (and for ``key_prefix``, the prefix of an existing key)
    and audit it, and each lock when this failure reaches it."""
    failures = _count(_ip_key(client_ip))
    key_failures = _count(_prefix_key(key_prefix)) if key_prefix else 0
    audit(action="apikey.auth_failed", client_ip=client_ip, reason=reason[:200], failures=failures,
          **({"key_prefix": key_prefix, "key_failures": key_failures} if key_prefix else {}))
    if failures == settings.GATEWAY_AUTH_FAILURES_PER_IP:
        audit(action="apikey.auth_blocked", client_ip=client_ip, failures=failures,
              window_seconds=settings.GATEWAY_AUTH_FAILURE_WINDOW_SECONDS)
    if key_prefix and key_failures == settings.GATEWAY_AUTH_FAILURES_PER_KEY:
        audit(action="apikey.auth_blocked", client_ip=client_ip, key_prefix=key_prefix, failures=key_failures,
              window_seconds=settings.GATEWAY_AUTH_FAILURE_WINDOW_SECONDS)


def record_auth_success(client_ip: str | None, key_prefix: str) -> None:
    """Mark that this key worked from this address (see the module docstring). Written at most once
    a minute per process and pair, so the hot path rarely pays a cache write."""
    pair, now = (client_ip or "unknown", key_prefix), time.monotonic()
    if now - _known_good_written.get(pair, -KNOWN_GOOD_WRITE_EVERY_SECONDS) < KNOWN_GOOD_WRITE_EVERY_SECONDS:
        return
    if len(_known_good_written) > 10_000:
        _known_good_written.clear()
    cache.set(_good_key(client_ip, key_prefix), 1, timeout=settings.GATEWAY_AUTH_KNOWN_GOOD_SECONDS)
    _known_good_written[pair] = now

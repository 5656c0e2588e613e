"""API key authentication: ``Authorization: Bearer gw_<prefix>_<secret>``."""
from __future__ import annotations

import copy
import hmac
from datetime import datetime, timedelta

from django.db.models import Case, Q, When
from django.utils import timezone
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import authentication, exceptions

from apps.core.client_ip import client_ip_for_request
from apps.quotas.auth_failures import check_auth_failures, record_auth_failure, record_auth_success

from .access import check_user_active
from .models import ApiKey, hash_api_key

API_KEY_PREFIX_MAX_CHARS = ApiKey._meta.get_field("prefix").max_length

LAST_USED_RESOLUTION = timedelta(minutes=1)  # write last_used_at at most this often per key
_last_used_written: dict[str, datetime] = {}  # per process: secret → when this process last wrote its use


def api_key_by_prefix(prefix: str) -> ApiKey | None:
    """The key with this prefix, current or replaced by a rotation, and its user, kept per process
    (gateway_project.config_cache): a revoked or rotated key, a disabled or blocked user is refused
    everywhere within GATEWAY_CONFIG_CHECK_SECONDS. Unknown prefixes are not kept. Each call gets
    its own copies."""
    from gateway_project.config_cache import cached_copy

    # A prefix is drawn so that it names one key (ApiKey.set_new_secret); should one be reused anyway
    # (seed_demo's derived prefixes), the key holding it as its current one wins.
    key = cached_copy("api_key", prefix, lambda: ApiKey.objects.select_related("user").filter(
        Q(prefix=prefix) | Q(previous_prefix=prefix)).order_by(Case(When(prefix=prefix, then=0), default=1)).first())
    if key is not None:
        key.user = copy.copy(key.user)  # the request may mark its user (permission caches)
    return key


def key_prefix_of(raw_key: str) -> str | None:
    """The prefix of a well-formed ``gw_<prefix>_<secret>``, else None."""
    parts = raw_key.split("_")
    if len(parts) < 3 or parts[0] != "gw":
        return None
    prefix = parts[1]
    # What no key can hold (ApiKey.prefix: 16 ASCII letters or digits at most) is refused unread: a
    # NUL byte would fail the query (a 500), and a long prefix is not worth a lookup or a counter.
    return prefix if 0 < len(prefix) <= API_KEY_PREFIX_MAX_CHARS and prefix.isascii() and prefix.isalnum() else None


def _refused(message: str, key: ApiKey | None = None, prefix: str | None = None) -> exceptions.AuthenticationFailed:
    """The failure, carrying the prefix it named when that names an existing key (counted per
    prefix, the one the lock in apps.quotas.auth_failures checks: a key's previous one too)."""
    failure = exceptions.AuthenticationFailed(message)
    failure.key_prefix = prefix if key is not None else None
    return failure


def _note_used(key: ApiKey, prefix: str) -> None:
    """Write when the key was last used, and when its previous secret was (``prefix`` names it), at
    most once a LAST_USED_RESOLUTION per secret and process: not a configuration change."""
    old_secret = prefix != key.prefix
    known = key.previous_last_used_at if old_secret else key.last_used_at  # as of the cached copy
    now = timezone.now()
    # Keyed apart: a prefix a rotation replaced was written as the current one just before.
    written = f"{prefix}:previous" if old_secret else prefix
    last_used = max(filter(None, (known, _last_used_written.get(written))), default=None)
    if last_used is not None and now - last_used <= LAST_USED_RESOLUTION:
        return
    fields = {"last_used_at": now, **({"previous_last_used_at": now} if old_secret else {})}
    ApiKey.objects.filter(pk=key.pk).update(**fields)
    if len(_last_used_written) > 10_000:
        _last_used_written.clear()
    _last_used_written[written] = now
    for name, value in fields.items():
        setattr(key, name, value)


def api_key_user(raw_key: str):
    """(user, ApiKey) for a usable key, or raise AuthenticationFailed. At most one indexed query.

    The secret a rotation replaced is accepted, under its own prefix, until the key's
    ``previous_valid_until``; a revoked or expired key refuses both."""
    prefix = key_prefix_of(raw_key)
    if prefix is None:
        raise _refused("Malformed API key.")
    key = api_key_by_prefix(prefix)
    # Compare even when the prefix is unknown. (A prefix kept per process answers sooner than one
    # looked up, which tells only that it was used lately; the 256-bit secret is what guards a key.)
    expected = (key.hash_for_prefix(prefix) if key is not None else "") or "0" * 64
    if not hmac.compare_digest(expected, hash_api_key(raw_key)) or key is None:
        raise _refused("Invalid API key.", key, prefix)
    if not key.is_usable:
        raise _refused("This API key is revoked or expired.", key, prefix)
    if prefix != key.prefix and not key.previous_secret_accepted:
        raise _refused("This API key was rotated and its old secret no longer works; use the new key.", key, prefix)
    if not key.user.is_active:
        raise _refused("This account is disabled.", key, prefix)
    check_user_active(key.user)  # blocked users are refused on every endpoint (403, audited)
    _note_used(key, prefix)
    # The prefix the client named: an answer quotes it, not the key's current one (whoever holds a
    # replaced, maybe leaked, secret does not learn the new prefix, which a few guesses would lock).
    key.named_prefix = prefix
    return key.user, key


class ApiKeyAuthentication(authentication.BaseAuthentication):
    keyword = "Bearer"

    def authenticate(self, request):
        header = authentication.get_authorization_header(request).decode("latin-1")
        if not header:
            return None
        client_ip = client_ip_for_request(request)  # behind a proxy: the real client, not the proxy
        scheme, _, raw_key = header.partition(" ")
        raw_key = raw_key.strip()
        named_prefix = key_prefix_of(raw_key)  # a rotated key's old one too: counted and locked apart
        # brute force: refused (429) before the key is even looked at (apps.quotas.auth_failures)
        check_auth_failures(client_ip, named_prefix)
        try:
            if scheme.lower() != self.keyword.lower() or not raw_key:
                raise exceptions.AuthenticationFailed("Use 'Authorization: Bearer <API key>'.")
            user, key = api_key_user(raw_key)
        except exceptions.AuthenticationFailed as failure:
            record_auth_failure(client_ip, reason=str(failure.detail), key_prefix=getattr(failure, "key_prefix", None))
            raise
        record_auth_success(client_ip, named_prefix or key.prefix)
        return user, key

    def authenticate_header(self, request) -> str:
        return self.keyword


class ApiKeyAuthenticationScheme(OpenApiAuthenticationExtension):
    target_class = "apps.identities.authentication.ApiKeyAuthentication"
    name = "ApiKey"

    def get_security_definition(self, auto_schema):
        return {"type": "http", "scheme": "bearer", "description": "A gateway API key (gw_...)."}

"""The pipeline's *limit* step: request rates (django-ratelimit on the shared cache) and budgets.

Counters live in the shared cache (Redis in services mode), so every Daphne process and worker
counts against the same numbers. Rates are fixed windows of the rate's period.
"""
from __future__ import annotations

from dataclasses import dataclass

from django.conf import settings
from django_ratelimit.core import get_usage

from apps.core.errors import RateLimited, ServiceUnavailable

from .budgets import check_budgets_open
from .metrics import count_backend_error, count_rejection
from .policies import api_key_limits, channel_limits, user_limits

RATE_GROUP = "gateway.rate"


@dataclass(frozen=True)
class RateCheck:
    limit: str  # "ip", "api_key", "user", "channel"
    key: str
    rate: str
    refusal: str  # the end of the sentence telling the sender which limit it was


def check_limits(*, user, channel, api_key=None, client_ip: str | None = None) -> None:
    """Count one request against every rate that applies, then refuse if a budget is used up.

    Raises RateLimited (429, retry_after = end of the window) or QuotaExceeded (429,
    retry_after = when the budget resets). Order: address, API key, user, channel; a refused
    request is not counted against the limits after the one that refused it.
    """
    for check in rate_checks(user=user, channel=channel, api_key=api_key, client_ip=client_ip):
        usage = _usage(check, increment=True)
        if usage and usage["should_limit"]:
            count_rejection(RateLimited.code, channel, limit=check.limit)
            raise RateLimited(
                f"Too many messages: the limit is {check.rate} {check.refusal}.",
                retry_after=max(1, int(usage["time_left"])),
            )
    check_budgets_open(user=user, api_key_id=getattr(api_key, "pk", None), channel=channel)


def rate_checks(*, user, channel, api_key=None, client_ip: str | None = None) -> list[RateCheck]:
    """The rates that apply to one request, each with its counter key (empty rates are skipped)."""
    channel_policy = channel_limits(channel.pk)
    checks = []
    if client_ip and channel.kind not in settings.GATEWAY_IP_RATE_EXEMPT_KINDS and channel_policy.per_ip_rate:
        # A channel's own per-address rate counts separately from the global one.
        scope = f"{channel.pk}:" if channel_policy.sources["per_ip_rate"] == "channel policy" else ""
        checks.append(RateCheck("ip", f"ip:{scope}{client_ip}", channel_policy.per_ip_rate, "from your address"))
    if api_key is not None:
        key_rate = api_key_limits(api_key.pk).request_rate
        checks.append(RateCheck("api_key", f"api_key:{api_key.pk}", key_rate, "for this API key"))
    checks.append(RateCheck("user", f"user:{user.pk}", user_limits(user).request_rate, "for you"))
    checks.append(RateCheck("channel", f"channel:{channel.pk}", channel_policy.request_rate, "on this channel"))
    return [check for check in checks if check.rate]


def rate_usage(check: RateCheck) -> dict | None:
    """The current window's count for ``check`` without counting (for /api/v1/usage and the admin)."""
    return _usage(check, increment=False)


def _usage(check: RateCheck, *, increment: bool) -> dict | None:
    try:
        key = f"{settings.GATEWAY_LIMIT_KEY_PREFIX}:{check.key}"
        return get_usage(None, group=RATE_GROUP, key=lambda _g, _r: key, rate=check.rate, increment=increment)
    except Exception as exc:  # the cache backend's connection errors (Redis down)
        if settings.GATEWAY_RATE_LIMIT_FAIL_OPEN:
            count_backend_error("rate", "open", exc)
            return None
        count_backend_error("rate", "closed", exc)
        raise ServiceUnavailable(retry_after=settings.GATEWAY_LIMIT_UNAVAILABLE_RETRY_SECONDS) from exc


def check_address_rate(event: str, client_ip: str | None, rate: str, *, channel=None) -> None:
    """Count one ``event`` (e.g. "webchat_connect") from ``client_ip`` against ``rate``.

    For what happens before there is a sender to count (a web chat visitor minted, a socket
    opened). Raises RateLimited past the rate; no rate or no address: nothing to count."""
    if not rate or not client_ip:
        return
    check = RateCheck(event, f"{event}:ip:{client_ip}", rate, "from your address")
    usage = _usage(check, increment=True)
    if usage and usage["should_limit"]:
        count_rejection(RateLimited.code, channel, limit=event)
        raise RateLimited(f"Too many requests: the limit is {rate} {check.refusal}.",
                          retry_after=max(1, int(usage["time_left"])))

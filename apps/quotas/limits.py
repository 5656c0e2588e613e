"""The pipeline's *limit* step: request rates and budgets.

Rate counters live in the quota ledger (apps/quotas/ledger.py: Redis in services mode, shared by
every server process and worker; in the process on the embedded default). Rates are fixed windows
of the rate's period, each rate's windows offset by a fixed amount of its own so that they do not
all end at once. A request's rates are counted in one step: one Redis round trip for all of them.
"""
from __future__ import annotations

import logging
import math
import time
import zlib
from dataclasses import dataclass

from django.conf import settings

from apps.core.errors import RateLimited, ServiceUnavailable

from .budgets import check_budgets_open
from .ledger import RateCall, get_ledger
from .metrics import count_backend_error, count_rejection
from .models import parse_rate
from .policies import api_key_limits, channel_limits, user_limits

logger = logging.getLogger(__name__)

EXPIRY_MARGIN_SECONDS = 5  # a window's counter outlives its window by this much


@dataclass(frozen=True)
class RateCheck:
    limit: str  # "ip", "api_key", "user", "channel"
    key: str
    rate: str
    refusal: str  # the end of the sentence telling the sender which limit it was


def window_end(key: str, period: int, now: float) -> int:
    """When the current window of the rate ``key`` ends (epoch seconds)."""
    offset = zlib.crc32(key.encode()) % period
    return int((now - offset) // period + 1) * period + offset


def _window(check: RateCheck, now: float) -> tuple[RateCall, int]:
    limit, period = parse_rate(check.rate)
    ends = window_end(check.key, period, now)
    key = f"{settings.GATEWAY_LIMIT_KEY_PREFIX}:rate:{check.key}:{period}:{ends}"
    return RateCall(key=key, limit=limit, expires_at=ends + EXPIRY_MARGIN_SECONDS), ends


def check_limits(*, user, channel, api_key=None, client_ip: str | None = None) -> None:
    """Count one request against every rate that applies, then refuse if a budget is used up.

    Raises RateLimited (429, retry_after = end of the window) or QuotaExceeded (429,
    retry_after = when the budget resets). Order: address, API key, user, channel; a refused
    request is not counted against the limits after the one that refused it.
    """
    count_requests(rate_checks(user=user, channel=channel, api_key=api_key, client_ip=client_ip), channel=channel)
    check_budgets_open(user=user, api_key_id=getattr(api_key, "pk", None), channel=channel)


def count_requests(checks: list[RateCheck], *, channel=None, what: str = "messages") -> None:
    """Count one request against each of ``checks`` in order, in one step; RateLimited at the
    first one it goes over (the later ones do not count it)."""
    now = time.time()
    counted = []  # (check, its counter, when its window ends)
    for check in checks:
        try:
            counted.append((check, *_window(check, now)))
        except ValueError:  # a policy row saved before its rate was validated so: ignored, loudly
            logger.error("a request rate that does not parse is ignored", extra={"limit": check.limit,
                                                                                  "rate": check.rate})
    if not counted:
        return
    try:
        counts = get_ledger().count_rates([call for _, call, _ in counted], now=now)
    except Exception as exc:  # the store's connection errors (Redis down)
        outcome = "open" if settings.GATEWAY_RATE_LIMIT_FAIL_OPEN else "closed"
        for _ in counted:
            count_backend_error("rate", outcome, exc)
        if outcome == "open":
            return
        raise ServiceUnavailable(retry_after=settings.GATEWAY_LIMIT_UNAVAILABLE_RETRY_SECONDS) from exc
    for (check, call, ends), count in zip(counted, counts, strict=False):  # counts stop at a refusal
        if count > call.limit:
            count_rejection(RateLimited.code, channel, limit=check.limit)
            raise RateLimited(f"Too many {what}: the limit is {check.rate} {check.refusal}.",
                              retry_after=max(1, math.ceil(ends - now)))


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
    """The current window of ``check`` without counting (for /api/v1/usage and the admin):
    ``{"count", "time_left"}``, or None when the store cannot be reached."""
    now = time.time()
    try:
        call, ends = _window(check, now)
        [count] = get_ledger().rate_counts([call.key], now=now)
    except ValueError:  # a rate that does not parse (count_requests ignores it)
        return None
    except Exception as exc:
        count_backend_error("rate_read", "unknown", exc)
        return None
    return {"count": count, "time_left": ends - now}


def check_address_rate(event: str, client_ip: str | None, rate: str, *, channel=None) -> None:
    """Count one ``event`` (e.g. "webchat_connect") from ``client_ip`` against ``rate``.

    For what happens before there is a sender to count (a web chat visitor minted, a socket
    opened). Raises RateLimited past the rate; no rate or no address: nothing to count."""
    if not rate or not client_ip:
        return
    count_requests([RateCheck(event, f"{event}:ip:{client_ip}", rate, "from your address")], channel=channel,
                   what="requests")

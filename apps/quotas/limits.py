"""The pipeline's *limit* step: request rates on the shared cache (django-ratelimit)."""
from __future__ import annotations

from django.conf import settings
from django_ratelimit.core import get_usage

from apps.conversations.errors import RateLimited

USER_RATE_GROUP = "gateway.user"


def check_request_rate(*, user, channel) -> None:
    """Count one request for ``user``; raise RateLimited (with retry_after) past GATEWAY_USER_RATE.

    The counter lives in the shared cache, so every Daphne process and worker sees the same count.
    """
    usage = get_usage(
        None,
        group=USER_RATE_GROUP,
        key=lambda _group, _request: f"user:{user.pk}",
        rate=settings.GATEWAY_USER_RATE,
        increment=True,
    )
    if usage and usage["should_limit"]:
        raise RateLimited(
            f"Too many messages: the limit is {settings.GATEWAY_USER_RATE}.",
            retry_after=max(1, int(usage["time_left"])),
        )

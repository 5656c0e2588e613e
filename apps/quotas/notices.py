"""Telling a webhook channel's sender, politely, that a limit or an identity rule refused their message.

Slack and WeCom must get their 200 at once, so the notice goes out from a small thread pool,
through the connector's ``send_error`` (the same path as a failed agent run). One notice per
sender, channel and refusal kind per window (at most GATEWAY_REFUSAL_NOTICE_INTERVAL_SECONDS),
so a flood of refused messages does not become a flood of replies. Best effort: a notice that
cannot be sent is logged and dropped; the refusal itself is already counted.
"""
from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor

from django.conf import settings
from django.core.cache import cache
from django.db import close_old_connections

from apps.core.errors import GatewayError, QuotaExceeded, RateLimited

logger = logging.getLogger(__name__)

LIMIT_CODES = {RateLimited.code, QuotaExceeded.code}
# Identity refusals (an unknown sender on a channel that refuses strangers, a blocked user) carry
# the channel's own polite text (apps.identities.access).
IDENTITY_CODES = {"unknown_sender", "blocked"}
NOTICE_CODES = LIMIT_CODES | IDENTITY_CODES
_pool: ThreadPoolExecutor | None = None


def tell_refused(connector, msg, error: GatewayError) -> bool:
    """Queue a polite reply to the sender of refused ``msg``; returns whether one was queued."""
    if error.code not in NOTICE_CODES:
        return False
    window = max(1, min(error.retry_after or 60, settings.GATEWAY_REFUSAL_NOTICE_INTERVAL_SECONDS))
    gate = f"{settings.GATEWAY_LIMIT_KEY_PREFIX}:notice:{connector.channel.pk}:{msg.user_id}:{error.code}"
    try:
        if not cache.add(gate, 1, timeout=window):
            return False
    except Exception:  # the cache is down: stay quiet rather than risk a reply per message
        logger.warning("refusal notice skipped: cache unavailable")
        return False
    notice = type(error)(polite_text(error), retry_after=error.retry_after)
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="refusal-notice")
    _pool.submit(_send, connector, msg, notice)
    return True


def polite_text(error: GatewayError) -> str:
    if error.code not in LIMIT_CODES:
        return error.message
    wait = error.retry_after or 0
    when = (f"in about {wait // 3600} h" if wait >= 3600 else f"in about {max(1, wait // 60)} min"
            if wait >= 60 else f"in {max(1, wait)} s")
    return f"Sorry, I can't take this message right now. {error.message} Please try again {when}."


def _send(connector, msg, notice: GatewayError) -> None:
    try:
        connector.send_error(msg, notice)
    except Exception:
        logger.exception("refusal notice could not be sent")
    finally:
        close_old_connections()

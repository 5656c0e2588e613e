"""Leases kept alive while their holder works on them: one renewal statement per process per period.

A claimed message (its agent run) and a reply being delivered carry ``lease_until``; recovery
takes over a row whose lease ran out, on the reasoning that its holder died. A run may legitimately
outlive any fixed lease (retries, fallbacks, tool steps, a slow platform), so while the holder is
alive its lease is renewed: every ``GATEWAY_AGENT_LEASE_SECONDS / 3`` one thread per process
pushes the lease of every row it holds forward in one UPDATE. A process that dies stops renewing,
and its rows are taken over once the lease runs out.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from contextlib import contextmanager
from datetime import timedelta

from django.conf import settings
from django.db import connection
from django.utils import timezone

from apps.conversations.models import Message, Status

logger = logging.getLogger(__name__)

_held: Counter = Counter()  # pk -> how many holders in this process
_lock = threading.Lock()
_thread: threading.Thread | None = None


@contextmanager
def kept(pk):
    """Renew the lease of message ``pk`` (claimed, or a reply being delivered) until the block ends."""
    global _thread
    with _lock:
        _held[pk] += 1
        if _thread is None or not _thread.is_alive():
            _thread = threading.Thread(target=_renew_forever, name="lease-keeper", daemon=True)
            _thread.start()
    try:
        yield
    finally:
        with _lock:
            _held[pk] -= 1
            if _held[pk] <= 0:
                del _held[pk]


def renewal_period() -> float:
    return max(0.5, settings.GATEWAY_AGENT_LEASE_SECONDS / 3)


def renew_held() -> int:
    """Push the lease of every row this process holds forward; returns how many rows were renewed.

    Only rows still in progress (a claimed message, an undelivered reply) are touched.
    """
    with _lock:
        ids = list(_held)
    if not ids:
        return 0
    until = timezone.now() + timedelta(seconds=settings.GATEWAY_AGENT_LEASE_SECONDS)
    return Message.objects.filter(pk__in=ids, status__in=[Status.PROCESSING, Status.PENDING]).update(
        lease_until=until)


def _renew_forever() -> None:
    while True:
        time.sleep(renewal_period())
        try:
            renew_held()
        except Exception:  # the database is away: the next period tries again
            logger.warning("could not renew leases", exc_info=True)
        finally:
            connection.close()  # one statement per period: not worth holding a connection between them

"""Telling a database outage from a bug, and riding one out where the work is already paid for."""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from django.db import InterfaceError, OperationalError, connection

logger = logging.getLogger(__name__)
T = TypeVar("T")

# SQLSTATEs that say "try again" rather than "this statement is wrong": connection exceptions (08),
# operator intervention — a cancelled statement, shutdown, crash recovery (57014, 57P0x) —,
# insufficient resources such as too many connections (53), a lock not available (55P03), and
# serialization failures and deadlocks (40001, 40P01).
TRANSIENT_SQLSTATES = ("08", "57014", "57P", "53", "55P03", "40001", "40P01")


def is_database_outage(exc: BaseException) -> bool:
    """Whether ``exc`` is the database being unreachable or interrupted (worth retrying), not a
    bug in a statement (which would fail the same way again)."""
    if not isinstance(exc, OperationalError | InterfaceError):
        return False
    sqlstate = getattr(exc.__cause__, "sqlstate", None)
    if sqlstate:
        return sqlstate.startswith(TRANSIENT_SQLSTATES)
    if connection.vendor == "sqlite":  # SQLite reports its syntax errors as OperationalError too
        return "locked" in str(exc) or "busy" in str(exc)
    # No SQLSTATE: no server answered — the connection broke, or none could be had from the pool.
    return True


def through_outage(step: Callable[[], T], *, tries: int = 4, first_delay: float = 0.5) -> T:
    """``step()``, tried again after 0.5, 1, 2 s when the database is out (giving the broken
    connection back first). For writes of work already paid for, such as a model's answer, which a
    retry from the start would pay for again. Inside a transaction the error goes straight through."""
    for attempt in range(tries):
        try:
            return step()
        except (OperationalError, InterfaceError) as exc:
            if attempt == tries - 1 or connection.in_atomic_block or not is_database_outage(exc):
                raise
            logger.warning("database unavailable; trying the write again", extra={"error": str(exc)[:300]})
            connection.close()
            time.sleep(first_delay * 2 ** attempt)
    raise AssertionError("unreachable")

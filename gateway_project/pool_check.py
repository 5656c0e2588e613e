"""How the database pool checks a connection it lends: a round trip, unless it passed one just now.

psycopg's pool runs its ``check`` on every connection it hands out; Django's own (CONN_HEALTH_CHECKS)
sends an empty query each time. Under load the same few connections are lent again within
milliseconds, and every request and agent run borrows one or two: that check was a round trip per
borrow, for connections that had just answered. Here a connection is checked when its last check is
older than ``seconds``; otherwise it is lent as it is.

What that gives up: after PostgreSQL restarts, a connection checked in the last ``seconds`` fails
on its first use instead of being replaced quietly. That use fails the way any statement does when
the database goes away (a 503 to a client, a retried agent run), and the pool drops the broken
connection when it comes back. ``seconds=0`` checks every time, as Django does.

Built by the gateway's database engine (gateway_project/postgresql/base.py).
"""
from __future__ import annotations

import time

CHECKED_AT = "_gateway_checked_at"


class CheckUnlessRecent:
    """``check`` for ``psycopg_pool.ConnectionPool``."""

    def __init__(self, seconds: float, clock=time.monotonic):
        self.seconds = seconds
        self.clock = clock

    def __call__(self, conn) -> None:
        now = self.clock()
        if now - getattr(conn, CHECKED_AT, float("-inf")) < self.seconds:
            return
        from psycopg_pool import ConnectionPool

        ConnectionPool.check_connection(conn)  # raises if the connection is broken
        setattr(conn, CHECKED_AT, now)

    def __repr__(self) -> str:  # shown in the pool's log lines
        return f"CheckUnlessRecent(seconds={self.seconds})"

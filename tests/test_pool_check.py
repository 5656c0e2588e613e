"""The database pool checks a lent connection with a round trip only when its last check is old
(gateway_project/pool_check.py), against a real PostgreSQL and psycopg's real pool."""
import os
import time

import psycopg
import pytest
from django.db import OperationalError, connection
from psycopg.conninfo import make_conninfo
from psycopg_pool import ConnectionPool

from gateway_project.pool_check import CHECKED_AT, CheckUnlessRecent

pytestmark = pytest.mark.services


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def conninfo() -> str:
    """The test server's maintenance database (any database of the server would do)."""
    return make_conninfo(os.environ["DATABASE_URL"].replace("postgres://", "postgresql://", 1), dbname="postgres")


def terminate(conn: psycopg.Connection) -> None:
    """Cut the connection from the server's side, as a PostgreSQL restart does."""
    with psycopg.connect(conninfo(), autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", [conn.info.backend_pid])


def test_a_connection_checked_within_the_window_is_lent_without_a_round_trip():
    clock = Clock()
    check = CheckUnlessRecent(1.0, clock=clock)
    with psycopg.connect(conninfo(), autocommit=True) as conn:
        check(conn)  # never checked: a round trip, which passes
        terminate(conn)
        clock.now += 0.5
        check(conn)  # checked half a second ago: no round trip, so the cut goes unnoticed
        clock.now += 1.0
        with pytest.raises(psycopg.OperationalError):
            check(conn)  # the last check is 1.5 s old: the round trip finds the cut


def test_zero_seconds_checks_every_time():
    check = CheckUnlessRecent(0)
    with psycopg.connect(conninfo(), autocommit=True) as conn:
        check(conn)
        terminate(conn)
        with pytest.raises(psycopg.OperationalError):
            check(conn)


def test_the_pool_replaces_a_dead_connection_once_the_window_has_passed():
    clock = Clock()
    with ConnectionPool(conninfo(), min_size=1, max_size=1, check=CheckUnlessRecent(1.0, clock=clock),
                        kwargs={"autocommit": True}) as pool:
        with pool.connection() as conn:
            first_pid = conn.info.backend_pid
        terminate(conn)
        clock.now += 0.2
        # Lent as it is: its first statement fails, and the pool drops it when it comes back.
        with pytest.raises(psycopg.OperationalError), pool.connection() as conn:
            conn.execute("SELECT 1")
        with pool.connection() as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
            second_pid = conn.info.backend_pid
        terminate(conn)
        clock.now += 5
        with pool.connection() as conn:  # the check finds it dead: the pool lends a new one
            assert conn.execute("SELECT 1").fetchone() == (1,)
            assert conn.info.backend_pid not in (first_pid, second_pid)


@pytest.mark.django_db(transaction=True)
def test_the_gateways_pool_lends_a_just_checked_connection_without_a_round_trip():
    """Through Django: a connection cut right after use is lent again as it is (its statement
    fails, as during a restart); once the window has passed, the pool checks and replaces it."""
    if connection.pool is None:
        pytest.skip("DATABASE_POOL=false")
    connection.close()  # give back the test's own connection: the next borrow is checked
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    raw = connection.connection
    setattr(raw, CHECKED_AT, time.monotonic())  # as under load: it passed a check just now
    connection.close()
    terminate(raw)
    failed = False
    for _ in range(connection.pool.get_stats()["pool_size"]):  # whichever idle connection is lent
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT 1")
        except OperationalError:
            failed = True
            break
        finally:
            connection.close()
    assert failed, "the cut connection was lent without a check, so its statement failed"
    with connection.cursor() as cursor:  # the pool dropped it when it came back
        cursor.execute("SELECT 1")
        assert cursor.fetchone() == (1,)
    connection.close()

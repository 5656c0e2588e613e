"""Telling a database outage from a bug (gateway_project/db.py), riding one out where the model's
answer is already paid for, and giving up cleanly when it lasts."""
import pytest
from django.db import DatabaseError, connection, transaction

from apps.agents.claims import claim
from apps.agents.runtime import give_up_after_outage
from apps.conversations.models import Message
from gateway_project.db import is_database_outage, through_outage
from tests.helpers import send


def database_error(sql: str) -> DatabaseError:
    try:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(sql)
    except DatabaseError as exc:
        return exc
    raise AssertionError(f"{sql!r} did not fail")


@pytest.mark.django_db
def test_a_wrong_statement_is_a_bug_not_an_outage():
    assert not is_database_outage(database_error("SELECT no_such_column FROM conversations_message"))
    assert not is_database_outage(ValueError("not a database error"))


@pytest.mark.services
@pytest.mark.django_db
def test_a_cancelled_statement_and_an_unreachable_server_are_outages():
    import psycopg

    cancelled = database_error("SET LOCAL statement_timeout = 1; SELECT pg_sleep(1)")
    assert cancelled.__cause__.sqlstate == "57014" and is_database_outage(cancelled)
    try:
        with connection.wrap_database_errors:
            psycopg.connect("host=127.0.0.1 port=9 user=postgres connect_timeout=2")
    except DatabaseError as unreachable:
        assert is_database_outage(unreachable)


@pytest.mark.services
@pytest.mark.django_db(transaction=True)
def test_a_write_is_tried_again_through_an_outage_and_a_bug_goes_straight_through():
    calls = []

    def flaky():
        calls.append(1)
        with connection.cursor() as cursor:
            if len(calls) < 3:  # the server cancels it, as an operator or a statement timeout would
                cursor.execute("SET statement_timeout = 1")
                try:
                    cursor.execute("SELECT pg_sleep(1)")
                finally:
                    cursor.execute("RESET statement_timeout")  # the pooled connection goes back clean
            cursor.execute("SELECT 42")
            return cursor.fetchone()[0]

    assert through_outage(flaky, first_delay=0.01) == 42 and len(calls) == 3
    bugs = []

    def buggy():
        bugs.append(1)
        with connection.cursor() as cursor:
            cursor.execute("SELECT no_such_column FROM conversations_message")

    with pytest.raises(DatabaseError):
        through_outage(buggy, first_delay=0.01)
    assert len(bugs) == 1


@pytest.mark.django_db
def test_giving_up_fails_only_the_message_this_run_left(api_channel, customer):
    mine = send(api_channel, customer, "the database never came back")
    claim(mine.id)  # attempts 1
    give_up_after_outage(mine.id, 1)
    mine.refresh_from_db()
    assert (mine.status, mine.error_code) == ("failed", "database_unavailable")
    theirs = send(api_channel, customer, "another worker has it now")
    claim(theirs.id)
    Message.objects.filter(pk=theirs.pk).update(attempts=2)  # claimed again since
    give_up_after_outage(theirs.id, 1)
    theirs.refresh_from_db()
    assert theirs.status == "processing"

"""gateway_project.db.update_then_fetch: an update and a lookup, one statement on PostgreSQL."""
import pytest
from django.db import connection

from apps.conversations.models import Message
from gateway_project.db import Update, update_then_fetch
from tests.helpers import send


@pytest.mark.django_db(transaction=True)
def test_update_then_fetch(api_channel, customer, django_assert_num_queries):
    first = send(api_channel, customer, "first")
    second = send(api_channel, customer, "second")
    table = Message._meta.db_table
    query = f"SELECT text, status FROM {table} WHERE id = %s"
    statements = 1 if connection.vendor == "postgresql" else 2
    with django_assert_num_queries(statements):
        row = update_then_fetch(Update(Message, first.pk, {"status": "failed", "error_code": "x"}), query,
                                [Message._meta.pk.get_db_prep_value(second.pk, connection)])
    assert row == ("second", second.status)
    first.refresh_from_db()
    assert (first.status, first.error_code) == ("failed", "x")
    second.refresh_from_db()
    assert second.status != "failed"  # only the updated row changed
    nothing = update_then_fetch(Update(Message, second.pk, {"error_code": "y"}), query + " AND 1 = 0",
                                [Message._meta.pk.get_db_prep_value(second.pk, connection)])
    assert nothing is None and Message.objects.get(pk=second.pk).error_code == "y"

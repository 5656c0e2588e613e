"""gateway_project.db.update_then_fetch: an update and a lookup, one statement on PostgreSQL."""
from contextlib import nullcontext

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


@pytest.mark.django_db(transaction=True)
def test_a_model_calls_usage_and_log_row_go_in_together(api_channel, customer, django_assert_num_queries):
    """write_together(Statement, obj with an auto-increment key): the agent run's usage upsert and
    LLMCall row, one statement on PostgreSQL; the database numbers the row and the key is set."""
    from decimal import Decimal

    from apps.logs.models import LLMCall
    from apps.quotas import budgets
    from apps.quotas.models import UsageDaily
    from gateway_project.db import write_together

    fields = dict(user_id=customer.pk, api_key_id=None, channel_id=api_channel.pk)
    calls = []
    for tokens in (7, 5):
        usage = budgets.usage_upsert(**fields, prompt_tokens=tokens - 2, completion_tokens=2, total_tokens=tokens,
                                     cost=Decimal("0.5"))
        call = LLMCall(user=customer, channel=api_channel, model="fake-gpt", provider="fake", status="ok",
                       total_tokens=tokens)
        with django_assert_num_queries(1 if connection.vendor == "postgresql" else 4):  # else BEGIN, 2, COMMIT
            write_together(usage, call)
        assert call.pk is not None and not call._state.adding
        calls.append(call.pk)
    assert list(LLMCall.objects.filter(pk__in=calls).order_by("pk").values_list("total_tokens", flat=True)) == [7, 5]
    row = UsageDaily.objects.get(user=customer, channel=api_channel, api_key=None)
    assert (row.calls, row.total_tokens, row.cost) == (2, 12, Decimal("1.0"))


@pytest.mark.django_db(transaction=True)
def test_a_conditional_update_writes_both_rows_or_neither(api_channel, customer, django_assert_num_queries):
    """write_together(Update(..., only_if=...), obj): the agent run's reply goes in only while the
    message is still its own; one statement on PostgreSQL either way."""
    from django.utils import timezone

    from gateway_project.db import write_together

    message = send(api_channel, customer, "mine?")
    Message.objects.filter(pk=message.pk).update(status="processing", attempts=1)
    postgresql = connection.vendor == "postgresql"
    answered = {"status": "answered", "updated_at": timezone.now()}

    def one_statement():
        return django_assert_num_queries(1) if postgresql else nullcontext()  # elsewhere: the ORM, in a transaction

    def reply(text):
        return Message(conversation_id=message.conversation_id, channel_id=message.channel_id, direction="out",
                       status="pending", reply_to=message, text=text)

    with one_statement():
        assert not write_together(Update(Message, message.pk, answered, only_if={"status": "processing",
                                                                                 "attempts": 2}), reply("no"))
    assert Message.objects.get(pk=message.pk).status == "processing"
    with one_statement():
        assert write_together(Update(Message, message.pk, answered, only_if={"status": "processing",
                                                                             "attempts": 1}), reply("yes"))
    assert Message.objects.get(pk=message.pk).status == "answered"
    assert list(Message.objects.filter(reply_to=message).values_list("text", flat=True)) == ["yes"]

"""Migration 0008 on a database where concurrent first messages had split a thread."""
from datetime import timedelta

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.utils import timezone

BEFORE = [("conversations", "0007_one_agent_reply_per_message")]
AFTER = [("conversations", "0008_one_conversation_per_thread")]


def migrate(targets):
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(targets)
    return executor.loader.project_state(targets).apps


@pytest.mark.django_db(transaction=True)
def test_the_newest_of_a_split_thread_keeps_it_and_the_others_keep_their_messages(api_channel, customer):
    apps = migrate(BEFORE)
    try:
        Conversation = apps.get_model("conversations", "Conversation")
        now = timezone.now()
        split = [Conversation.objects.create(channel_id=api_channel.pk, user_id=customer.pk, external_thread_id="t-1")
                 for _ in range(3)]
        for age, conversation in enumerate(reversed(split)):
            Conversation.objects.filter(pk=conversation.pk).update(last_message_at=now - timedelta(minutes=age))
        alone = Conversation.objects.create(channel_id=api_channel.pk, user_id=customer.pk, external_thread_id="t-2")
        unthreaded = [Conversation.objects.create(channel_id=api_channel.pk, user_id=customer.pk) for _ in range(2)]
    finally:
        apps = migrate(AFTER)
    Conversation = apps.get_model("conversations", "Conversation")
    threads = dict(Conversation.objects.values_list("pk", "external_thread_id"))
    assert threads == {split[0].pk: "", split[1].pk: "", split[2].pk: "t-1", alone.pk: "t-2",
                       unthreaded[0].pk: "", unthreaded[1].pk: ""}

"""One conversation per (channel, thread). Before the constraint, concurrent first messages of a
thread could each start one; the newest of such a group (the one new messages already joined)
keeps the thread, and the others keep their messages but no thread key."""
from django.db import migrations, models
from django.db.models import Count


def keep_one_conversation_per_thread(apps, schema_editor):
    Conversation = apps.get_model("conversations", "Conversation")
    groups = (Conversation.objects.exclude(external_thread_id="").values("channel_id", "external_thread_id")
              .annotate(n=Count("id")).filter(n__gt=1))
    for group in groups.iterator():
        split = Conversation.objects.filter(channel_id=group["channel_id"],
                                            external_thread_id=group["external_thread_id"])
        newest = split.order_by("-last_message_at", "-created_at").values_list("pk", flat=True).first()
        split.exclude(pk=newest).update(external_thread_id="")


class Migration(migrations.Migration):

    dependencies = [
        ('conversations', '0007_one_agent_reply_per_message'),
    ]

    operations = [
        migrations.RunPython(keep_one_conversation_per_thread, migrations.RunPython.noop),
        migrations.AddConstraint(
            model_name='conversation',
            constraint=models.UniqueConstraint(condition=models.Q(('external_thread_id', ''), _negated=True), fields=('channel', 'external_thread_id'), name='one_conversation_per_thread'),
        ),
    ]

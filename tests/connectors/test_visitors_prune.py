"""Silent visitors are pruned; visitors who spoke, and other users, are kept."""
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.utils import timezone

from apps.conversations.models import Conversation
from apps.identities.models import ChannelIdentity, User
from apps.identities.services import identity_create_customer


@pytest.mark.django_db
def test_only_old_silent_visitors_are_deleted(webchat_channel, customer):
    old = timezone.now() - timedelta(days=3)
    silent = identity_create_customer(channel=webchat_channel, external_id="visitor:silent", visitor=True).user
    spoke = identity_create_customer(channel=webchat_channel, external_id="visitor:spoke", visitor=True).user
    fresh = identity_create_customer(channel=webchat_channel, external_id="visitor:fresh", visitor=True).user
    User.objects.filter(pk__in=[silent.pk, spoke.pk, customer.pk]).update(date_joined=old)
    Conversation.objects.create(channel=webchat_channel, user=spoke)
    call_command("webchat_prune_visitors", "--older-than-days", "1")
    assert set(User.objects.values_list("pk", flat=True)) >= {spoke.pk, fresh.pk, customer.pk}
    assert not User.objects.filter(pk=silent.pk).exists()
    assert not ChannelIdentity.objects.filter(external_id="visitor:silent").exists()

"""Leases renewed while held; a pending reply delivered once by whoever claims it first."""
from datetime import timedelta

import pytest
from django.utils import timezone

from apps.agents import leases
from apps.agents.claims import WaitingForEarlier, claim
from apps.agents.delivery import deliver_pending
from apps.agents.recovery import stuck_replies
from apps.conversations.models import Message
from tests.helpers import Listener, send

pytestmark = pytest.mark.django_db


def test_a_held_lease_is_renewed_and_a_released_one_is_not(api_channel, customer, settings):
    settings.GATEWAY_AGENT_LEASE_SECONDS = 60
    message = claim(send(api_channel, customer, "hold me").id)
    soon = timezone.now() + timedelta(seconds=1)
    Message.objects.filter(pk=message.pk).update(lease_until=soon)
    with leases.kept(message.pk):
        assert leases.renew_held() == 1
    message.refresh_from_db()
    assert message.lease_until > soon + timedelta(seconds=30)
    assert leases.renew_held() == 0  # released: nobody renews it any more


def test_an_answered_message_is_not_renewed(api_channel, customer):
    message = send(api_channel, customer, "done already")
    Message.objects.filter(pk=message.pk).update(status="answered")
    with leases.kept(message.pk):
        assert leases.renew_held() == 0


def pending_reply(message, *, lease_until):
    Message.objects.filter(pk=message.pk).update(status="answered")
    return Message.objects.create(conversation_id=message.conversation_id, channel_id=message.channel_id,
                                  direction="out", status="pending", reply_to=message, agent=message.agent,
                                  text="stored, not sent", lease_until=lease_until)


def test_a_reply_whose_deliverer_died_is_recovered_and_sent_once(api_channel, customer):
    message = send(api_channel, customer, "deliver me later")
    listener = Listener.waiting_for(message)
    reply = pending_reply(message, lease_until=timezone.now() - timedelta(seconds=1))
    assert list(stuck_replies().values_list("pk", flat=True)) == [reply.pk]
    assert deliver_pending(reply.pk) is True
    assert deliver_pending(reply.pk) is False  # already sent: a second deliverer sends nothing
    reply.refresh_from_db()
    assert reply.status == "sent" and reply.lease_until is None
    assert [e["message_id"] for e in listener.drain() if e["type"] == "agent.reply"] == [str(reply.pk)]


def test_a_reply_with_a_live_deliverer_is_left_to_it(api_channel, customer):
    message = send(api_channel, customer, "being delivered")
    reply = pending_reply(message, lease_until=timezone.now() + timedelta(minutes=5))
    assert not stuck_replies().exists()
    assert deliver_pending(reply.pk) is False
    reply.refresh_from_db()
    assert reply.status == "pending"


@pytest.mark.parametrize("plain", [frozenset(), frozenset({"raw_sql"})], ids=["statement", "orm"])
def test_the_next_message_waits_while_a_reply_before_it_is_being_delivered(api_channel, customer, settings, plain):
    """Order holds on the platform too: the next message of a conversation is not claimed while the
    previous reply has a live deliverer; once that lease is out (the deliverer died) it is."""
    settings.GATEWAY_PLAIN = plain
    first = send(api_channel, customer, "first")
    reply = pending_reply(first, lease_until=timezone.now() + timedelta(minutes=5))
    second = send(api_channel, customer, "second", conversation_id=str(first.conversation_id))
    assert second.conversation_id == first.conversation_id
    with pytest.raises(WaitingForEarlier):
        claim(second.id)
    Message.objects.filter(pk=reply.pk).update(lease_until=timezone.now() - timedelta(seconds=1))
    claimed = claim(second.id)
    assert claimed is not None and claimed.pk == second.pk and claimed.status == "processing"
    assert not claimed.in_handoff


@pytest.mark.parametrize("plain", [frozenset(), frozenset({"raw_sql"})], ids=["statement", "orm"])
def test_a_message_waits_for_an_earlier_one_being_answered(api_channel, customer, settings, plain):
    settings.GATEWAY_PLAIN = plain
    first = send(api_channel, customer, "first")
    second = send(api_channel, customer, "second", conversation_id=str(first.conversation_id))
    assert claim(first.id).pk == first.pk
    with pytest.raises(WaitingForEarlier):
        claim(second.id)
    second.refresh_from_db()
    assert second.status == "accepted" and second.lease_until is not None  # its wait lease
    assert claim(second.id, ignore_order=True).pk == second.pk
    assert claim(second.id, ignore_order=True) is None  # claimed: nobody else takes it

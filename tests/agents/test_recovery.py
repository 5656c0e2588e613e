"""The periodic requeue of stranded messages (apps.agents.recovery)."""
from datetime import timedelta

import pytest
from django.utils import timezone

from apps.agents.recovery import requeue_stuck_messages, stuck_messages
from apps.agents.runtime import agent_run
from apps.conversations.models import Conversation, Direction, Message, Status
from tests.helpers import wait_until

pytestmark = pytest.mark.django_db


@pytest.fixture
def make_inbound(api_channel, customer, agent):
    conversation = Conversation.objects.create(channel=api_channel, user=customer, agent=agent)

    def make(status, *, age_seconds=0, lease_in_seconds=None, text="hello"):
        message = Message.objects.create(
            conversation=conversation, channel=api_channel, direction=Direction.INBOUND, status=status,
            sender=customer, agent=agent, text=text,
            lease_until=timezone.now() + timedelta(seconds=lease_in_seconds) if lease_in_seconds is not None else None,
        )
        Message.objects.filter(pk=message.pk).update(created_at=timezone.now() - timedelta(seconds=age_seconds))
        return message

    return make


def test_stuck_means_old_accepted_or_expired_lease(make_inbound, settings):
    settings.GATEWAY_REQUEUE_ACCEPTED_AFTER_SECONDS = 60
    old_accepted = make_inbound(Status.ACCEPTED, age_seconds=120)
    expired = make_inbound(Status.PROCESSING, age_seconds=120, lease_in_seconds=-5)
    make_inbound(Status.ACCEPTED, age_seconds=5)  # just accepted: its task is probably on its way
    make_inbound(Status.PROCESSING, age_seconds=120, lease_in_seconds=60)  # a worker holds it
    make_inbound(Status.ANSWERED, age_seconds=120)
    make_inbound(Status.ACCEPTED, age_seconds=3 * 24 * 3600)  # too old to answer now
    assert set(stuck_messages()) == {old_accepted, expired}


def test_requeued_message_is_answered_once_even_if_the_original_task_also_runs(make_inbound, settings):
    settings.GATEWAY_REQUEUE_ACCEPTED_AFTER_SECONDS = 0
    settings.GATEWAY_AGENT_DISPATCH = "thread"
    message = make_inbound(Status.ACCEPTED, age_seconds=10)
    assert requeue_stuck_messages() >= 1
    agent_run(message.id)  # the "lost" task turns up after all
    assert wait_until(lambda: Message.objects.get(pk=message.pk).status == Status.ANSWERED, timeout=20)
    assert Message.objects.filter(reply_to=message).count() == 1


def test_a_restart_lets_go_of_the_previous_processs_leases_wait_leases_included(make_inbound, settings,
                                                                               monkeypatch):
    """Embedded default, at startup: leases the previous process took (a run's, a delivery's, and a
    waiting message's wait lease) run out now; those this process took are kept."""
    from apps.agents import recovery

    settings.GATEWAY_AGENT_LEASE_SECONDS = 300
    settings.GATEWAY_ORDER_RETRY_MAX_DELAY_SECONDS = 10
    settings.GATEWAY_REQUEUE_ACCEPTED_AFTER_SECONDS = 60
    monkeypatch.setattr(recovery, "_PROCESS_STARTED", timezone.now())
    # Taken before this process started: a run's lease (a claim's 300 s), and a wait lease (claims.py:
    # the order re-check's longest delay plus a claim's lease, 310 s).
    running = make_inbound(Status.PROCESSING, age_seconds=120, lease_in_seconds=290)
    waiting = make_inbound(Status.ACCEPTED, age_seconds=120, lease_in_seconds=300)
    assert not set(stuck_messages()) & {running, waiting}
    # Taken by this process (after it started, so at least a wait lease past its start).
    mine = make_inbound(Status.ACCEPTED, age_seconds=120, lease_in_seconds=311)

    assert recovery.release_leases_of_the_previous_process() == 2
    assert set(stuck_messages()) == {running, waiting}
    mine.refresh_from_db()
    assert mine.lease_until > timezone.now()


def test_a_stuck_reply_goes_out_before_the_next_message_is_answered(transactional_db, make_inbound, settings,
                                                                    monkeypatch):
    """After a stop: the reply of a run that finished on the way out is left for recovery, and the
    next message of its conversation waits in ``accepted``. The reply is sent first."""
    from apps.agents import dispatch

    settings.GATEWAY_AGENT_DISPATCH = "thread"
    settings.GATEWAY_EMBEDDED_WORKERS = 1  # one at a time, in the order recovery queues them
    settings.GATEWAY_REQUEUE_ACCEPTED_AFTER_SECONDS = 0
    monkeypatch.setattr(dispatch, "_embedded_pool", None)
    first = make_inbound(Status.ANSWERED, age_seconds=20, text="first")
    stuck = Message.objects.create(
        conversation=first.conversation, channel=first.channel, direction=Direction.OUTBOUND,
        status=Status.PENDING, reply_to=first, agent=first.agent, text="Echo: first",
        error_code="delivery_deferred", lease_until=timezone.now() - timedelta(seconds=1))
    second = make_inbound(Status.ACCEPTED, age_seconds=10, text="second")
    assert requeue_stuck_messages() == 2
    assert wait_until(lambda: Message.objects.filter(reply_to=second, status=Status.SENT).exists(), timeout=20)
    stuck.refresh_from_db()
    assert stuck.status == Status.SENT
    assert stuck.updated_at <= Message.objects.get(reply_to=second).created_at
    dispatch._embedded().shutdown(wait=True)


def test_a_message_too_old_to_answer_is_expired_not_left_accepted(make_inbound, settings):
    """A server stopped longer than the longest age leaves its queued messages: recovery will not
    answer them, so they must not read as on their way for good."""
    from apps.agents.recovery import expire_stale_messages

    settings.GATEWAY_REQUEUE_MAX_AGE_SECONDS = 3600
    queued = make_inbound(Status.ACCEPTED, age_seconds=7200)
    cut_off = make_inbound(Status.PROCESSING, age_seconds=7200, lease_in_seconds=-5)
    held = make_inbound(Status.PROCESSING, age_seconds=7200, lease_in_seconds=60)  # a run still has it
    waiting = make_inbound(Status.ACCEPTED, age_seconds=7200, lease_in_seconds=60)  # waiting its turn
    answered = make_inbound(Status.ANSWERED, age_seconds=7200)
    young = make_inbound(Status.ACCEPTED, age_seconds=120)
    assert requeue_stuck_messages() == 1  # the young one; the old ones are expired first
    assert expire_stale_messages() == 0
    statuses = {m.pk: (m.status, m.error_code) for m in Message.objects.all()}
    assert statuses[queued.pk] == statuses[cut_off.pk] == (Status.FAILED, "expired")
    assert Message.objects.get(pk=queued.pk).updated_at > queued.updated_at  # when it was expired
    assert statuses[held.pk] == (Status.PROCESSING, "") and statuses[waiting.pk] == (Status.ACCEPTED, "")
    assert statuses[answered.pk] == (Status.ANSWERED, "") and statuses[young.pk][0] != Status.FAILED

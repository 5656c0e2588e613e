"""Per-conversation order: two messages of one user are answered in the order they arrived."""

import os
import subprocess
import sys
import threading
from dataclasses import replace

import pytest
from django.conf import settings

from apps.agents.claims import WaitingForEarlier
from apps.agents.runtime import agent_run
from apps.agents.tasks import DATABASE_RETRIES, Tries, after_order_wait, after_outage, ignores_order, run_agent
from apps.conversations.models import Message
from tests.connectors.connector_helpers import slack_event, slack_post
from tests.helpers import wait_until

pytestmark = pytest.mark.django_db


def two_dm_messages(client, slack_channel, first="first [[delay:0.3]]", second="second"):
    slack_post(client, slack_channel, slack_event("message_im.json", text=first))
    slack_post(client, slack_channel, slack_event("message_im.json", text=second))
    return list(Message.objects.filter(direction="in").order_by("created_at"))


def test_the_later_message_waits_while_the_earlier_is_unanswered(client, slack_channel, platforms):
    first, second = two_dm_messages(client, slack_channel)
    with pytest.raises(WaitingForEarlier):
        agent_run(second.id)
    second.refresh_from_db()
    assert (second.status, second.attempts) == ("accepted", 0)  # untouched, retried later
    agent_run(first.id)
    agent_run(second.id)
    assert [m["text"] for m in platforms.state.slack_messages] == ["Echo: first", "Echo: second"]


def test_other_conversations_are_not_held_up(client, slack_channel, platforms):
    slack_post(client, slack_channel, slack_event("message_im.json", text="mine"))
    slack_post(client, slack_channel, slack_event("message_im.json", channel="D0OTHER", user="U0OTHER",
                                                  text="theirs"))
    later = Message.objects.get(text="theirs")
    assert agent_run(later.id).status == "sent"


def test_a_stuck_earlier_message_stops_blocking_once_order_is_given_up(client, slack_channel, platforms):
    first, second = two_dm_messages(client, slack_channel)
    assert agent_run(second.id, ignore_order=True).status == "sent"


def test_embedded_dispatch_answers_in_arrival_order(client, slack_channel, platforms, settings, transactional_db):
    # The in-process pool (not the broker: in services mode a live e2e worker may be listening).
    settings.GATEWAY_AGENT_DISPATCH = "thread"
    settings.GATEWAY_ORDER_RETRY_DELAY_SECONDS = 0.05
    # Both runs start at once on the pool; the second must wait while the first is with the model.
    two_dm_messages(client, slack_channel)
    assert wait_until(lambda: len(platforms.state.slack_messages) >= 2, timeout=30)
    assert [m["text"] for m in platforms.state.slack_messages] == ["Echo: first", "Echo: second"]


def test_embedded_messages_waiting_their_turn_hold_no_pool_thread(client, slack_channel, platforms, settings,
                                                                  transactional_db, monkeypatch):
    """Three messages wait behind one at the model, on a pool of two threads: a message of another
    conversation is still answered while that one is at the model."""
    from apps.agents import dispatch

    settings.GATEWAY_AGENT_DISPATCH = "thread"
    settings.GATEWAY_EMBEDDED_WORKERS = 2
    settings.GATEWAY_ORDER_RETRY_DELAY_SECONDS = 0.05
    monkeypatch.setattr(dispatch, "_embedded_pool", None)  # a pool of this test's size
    for text in ("first [[delay:2]]", "second", "third", "fourth"):
        slack_post(client, slack_channel, slack_event("message_im.json", text=text))
    slack_post(client, slack_channel, slack_event("message_im.json", channel="D0OTHER", user="U0OTHER",
                                                  text="theirs"))
    sent = platforms.state.slack_messages
    assert wait_until(lambda: any(m["text"] == "Echo: theirs" for m in sent), timeout=30)
    assert not any(m["text"] == "Echo: first" for m in sent)  # the first is still at the model
    assert wait_until(lambda: len(sent) >= 5, timeout=60)
    mine = [m["text"] for m in sent if m["text"] != "Echo: theirs"]
    assert mine == ["Echo: first", "Echo: second", "Echo: third", "Echo: fourth"]
    # The re-checks still on the timer find their messages answered and end; none outlives the test.
    assert wait_until(lambda: dispatch.delayed_runs() == 0, timeout=30)
    dispatch._embedded().shutdown(wait=True)


@pytest.mark.parametrize("give_way", [60, 0])
def test_embedded_runs_that_can_go_now_are_taken_before_re_checks(settings, monkeypatch, give_way):
    """A new message (or a hand-over) queued behind due re-checks runs first: a burst into one
    conversation must not hold up the others, or the run that lets the burst through. A re-check
    gives way for at most the longest pause between re-checks (here 60 s, then none): sustained
    overload cannot starve it."""
    from apps.agents import dispatch

    settings.GATEWAY_AGENT_DISPATCH = "thread"
    settings.GATEWAY_EMBEDDED_WORKERS = 1
    settings.GATEWAY_ORDER_RETRY_MAX_DELAY_SECONDS = give_way
    monkeypatch.setattr(dispatch, "_embedded_pool", None)
    ran, release = [], threading.Event()

    def run(message_id, tries=None):  # stands for the agent run: holds the one thread until released
        if message_id == "at the model":
            release.wait(30)
        ran.append(message_id)

    monkeypatch.setitem(dispatch._in_process, dispatch.RUN_AGENT, run)
    dispatch.enqueue_agent_run("at the model")
    for n in range(5):
        dispatch.run_later(0, dispatch.RUN_AGENT, f"re-check {n}")
    assert wait_until(lambda: dispatch.queue_depth() == 5, timeout=10)  # all five due and queued
    dispatch.enqueue_agent_run("new")
    release.set()
    assert wait_until(lambda: len(ran) == 7, timeout=10)
    re_checks = [f"re-check {n}" for n in range(5)]
    assert ran == ["at the model"] + (["new"] + re_checks if give_way else re_checks + ["new"])
    dispatch._embedded().shutdown(wait=True)


def test_celery_task_retries_then_gives_up_on_a_stuck_earlier_message(client, slack_channel, platforms, settings):
    settings.GATEWAY_ORDER_RETRY_DELAY_SECONDS = 0.01
    settings.GATEWAY_ORDER_MAX_WAIT_SECONDS = 0.03  # three re-checks, then answer anyway
    first, second = two_dm_messages(client, slack_channel)
    run_agent.apply(args=[str(second.id)])  # eager: retries run inline
    second.refresh_from_db()
    assert second.status == "answered" and second.attempts == 1
    first.refresh_from_db()
    assert first.status == "accepted"


def queued() -> int:
    """Agent runs waiting in the broker's queue (nobody consumes it during unit tests)."""
    from django.conf import settings

    from gateway_project.celery import app

    with app.connection_for_write() as conn:
        return conn.default_channel.queue_declare(queue=settings.CELERY_TASK_DEFAULT_QUEUE, passive=True).message_count


def test_answering_a_message_queues_the_next_one_of_its_conversation(client, slack_channel, platforms,
                                                                      transactional_db):
    """The next message does not wait for its own re-check: its predecessor's run starts it."""
    first, second = two_dm_messages(client, slack_channel, first="first")
    before = queued()
    reply = agent_run(first.id)
    assert queued() == before + 1  # the second message, queued again now that the first is done
    # The statement that found it also recorded the delivery.
    assert Message.objects.filter(pk=reply.pk, status="sent", attempts=1).exists()
    agent_run(second.id)
    assert queued() == before + 1  # nothing waits after the last one


def test_a_failed_delivery_still_starts_the_next(client, slack_channel, platforms, settings, transactional_db):
    settings.CONNECTOR_SEND_ATTEMPTS = 1
    platforms.script(slack_429=1, retry_after=0)
    first, _second = two_dm_messages(client, slack_channel, first="first")
    before = queued()
    reply = agent_run(first.id)
    assert Message.objects.get(pk=reply.pk).status == "failed"
    assert queued() == before + 1


def test_re_checks_back_off_and_add_up_to_the_longest_wait(settings):
    settings.GATEWAY_ORDER_RETRY_DELAY_SECONDS = 0.5
    settings.GATEWAY_ORDER_RETRY_MAX_DELAY_SECONDS = 4
    settings.GATEWAY_ORDER_MAX_WAIT_SECONDS = 20
    tries, delays = Tries(), []
    while not ignores_order(tries):
        delay, tries = after_order_wait(tries)
        delays.append(delay)
    assert delays[:6] == [0.5, 1, 2, 4, 4, 4]
    assert sum(delays) >= 20 and sum(delays[:-1]) < 20  # the try after the last wait goes ahead


def test_a_message_waits_at_least_once_even_with_no_longest_wait(settings):
    settings.GATEWAY_ORDER_MAX_WAIT_SECONDS = 0
    assert not ignores_order(Tries())
    assert ignores_order(after_order_wait(Tries())[1])


def test_database_retries_back_off_then_give_up():
    tries, delays = Tries(), []
    while (again := after_outage(tries, claimed_attempt=1)) is not None:
        delay, tries = again
        delays.append(delay)
    assert delays[:6] == [1, 2, 4, 8, 10, 10] and len(delays) == DATABASE_RETRIES
    assert tries.release_attempt == 1


def test_a_message_stops_waiting_once_the_longest_wait_has_passed_on_the_clock(settings):
    """Re-checks held up behind other work wait longer than their pauses: the longest wait counts
    from the first re-check, not only the pauses' sum."""
    settings.GATEWAY_ORDER_MAX_WAIT_SECONDS = 300
    first_wait = after_order_wait(Tries())[1]
    assert not ignores_order(first_wait)  # 0.5 s of pauses, just now
    assert ignores_order(replace(first_wait, waiting_since=first_wait.waiting_since - 301))
    assert not ignores_order(replace(first_wait, waiting_since=first_wait.waiting_since - 299))


def test_a_run_a_shut_down_pool_refuses_is_not_left_queued():
    from apps.agents import dispatch

    pool = dispatch._Pool(1)
    pool.shutdown()
    with pytest.raises(RuntimeError):
        pool.submit(dispatch.NOW, print, "never")
    assert pool.queued() == 0


def test_a_pool_shutting_down_runs_what_it_accepted_and_nothing_it_refused():
    """Submitters racing a shutdown: each run is either accepted and run, or refused and not run;
    nothing is left queued. (A refused submit once took back another run's entry.)"""
    from apps.agents import dispatch

    for _ in range(20):
        pool, ran, refused = dispatch._Pool(2), [], []

        def submitter(k, pool=pool, ran=ran, refused=refused):
            for i in range(200):
                try:
                    pool.submit(dispatch.NOW, ran.append, (k, i))
                except RuntimeError:
                    refused.append((k, i))

        threads = [threading.Thread(target=submitter, args=(k,)) for k in range(4)]
        for thread in threads:
            thread.start()
        pool.shutdown(wait=False)
        for thread in threads:
            thread.join()
        pool.shutdown(wait=True)
        assert pool.queued() == 0
        assert not set(ran) & set(refused)
        assert len(ran) + len(refused) == 800


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the thread's end
def test_a_run_that_ends_its_thread_does_not_strand_the_queued_ones():
    """SystemExit in a run ends its thread; another takes the runs queued behind it."""
    from apps.agents import dispatch

    pool, release, ran = dispatch._Pool(1), threading.Event(), []

    def exits():
        release.wait(10)
        raise SystemExit

    pool.submit(dispatch.NOW, exits)
    pool.submit(dispatch.NOW, ran.append, "queued")
    release.set()
    assert wait_until(lambda: ran == ["queued"], timeout=10)
    pool.shutdown()


EXITING = """
import threading, time
from concurrent.futures import ThreadPoolExecutor
import django
django.setup()
from apps.agents import dispatch

def say(line):
    print(line, flush=True)

idle, busy, started, idle_ran = dispatch._Pool(2), dispatch._Pool(1), threading.Event(), threading.Event()

def idle_job():
    say("idle pool: ran")
    idle_ran.set()

# Its thread is idle from here on; under load it could otherwise still be queued at the exit.
idle.submit(dispatch.NOW, idle_job)
idle_ran.wait(10)
# The interpreter's exit hooks wait for this executor's thread: meanwhile no executor takes a
# future (asgiref's publishing included), while the main thread does not count as ended yet.
ThreadPoolExecutor(1).submit(time.sleep, 1.5)

def at_the_model():
    started.set()
    time.sleep(0.5)
    seen = dispatch.process_stopping()  # in that window
    time.sleep(2)  # past it: a daemon thread would be cut off here
    say(f"in flight: done, stopping seen: {seen}, {busy.queued()} left")

# Submitted from a daemon thread, as the recovery and timer threads submit.
submitter = threading.Thread(target=busy.submit, args=(dispatch.NOW, at_the_model), daemon=True)
submitter.start()
submitter.join()
for n in range(3):
    busy.submit(dispatch.NOW, say, f"queued {n}: ran")
started.wait(10)
say("main: returns")
"""


def test_an_exiting_process_finishes_the_runs_in_flight_and_starts_no_queued_one():
    """The server stops (Ctrl-C on `make run`): the run at the model finishes, the three queued
    stay queued (their messages stay ``accepted`` for the next start), and idle threads do not
    hold the process. (An executor's threads ran every queued run on the way out, where a run can
    no longer publish and, under `make run`, the model may be gone.) The run sees the stop as soon
    as the exit begins, and is not cut off though a daemon thread queued it."""
    done = subprocess.run([sys.executable, "-c", EXITING], cwd=settings.BASE_DIR, capture_output=True, text=True,
                          env={**os.environ, "DJANGO_SETTINGS_MODULE": "gateway_project.settings"}, timeout=60)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    in_flight = "in flight: done, stopping seen: True, 3 left"
    assert sorted(lines) == ["idle pool: ran", in_flight, "main: returns"], done.stdout
    assert lines.index("main: returns") < lines.index(in_flight)


def test_a_re_check_carrying_tries_this_version_does_not_know_still_runs(client, slack_channel, platforms):
    """A rolling deploy or a rollback: a newer worker's re-check reaches this one."""
    first, second = two_dm_messages(client, slack_channel, first="first")
    run_agent.apply(args=[str(first.id)])
    run_agent.apply(args=[str(second.id)], kwargs={"order_waits": 1, "order_waited": 0.5, "from_a_later_version": 1})
    second.refresh_from_db()
    assert second.status == "answered"

"""RabbitMQ as the Celery broker: a fresh vhost, and the broker restarted under the gateway.

The stack (`gw_rabbitmq`) has a private RabbitMQ node as its broker; Redis stays the channel layer
and cache. Every test restores what it broke.
"""
from __future__ import annotations

import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from devtools.stack import http
from tests.helpers import wait_until

from .conftest import accept_all, post_message, sql, wait_until_answered
from .test_faults import answered_after_recovery, wait_for_status

pytestmark = [pytest.mark.services, pytest.mark.e2e]


def wait_for_row(gw, text: str, timeout: float = 30) -> tuple[str, str]:
    """(id, status) of the inbound message with this text, once the gateway has stored it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = sql(gw, "SELECT id::text, status FROM conversations_message WHERE direction = 'in' AND text = %s", text)
        if rows:
            return rows[0]
        time.sleep(0.1)
    raise AssertionError(f"no message {text!r} was stored")


def queue_depth(gw, queue: str = "gateway") -> int:
    """Messages ready in ``queue`` on the stack's RabbitMQ node (vhost /)."""
    for line in gw.rabbitmq.ctl("list_queues", "name", "messages_ready").splitlines():
        name, _, depth = line.partition("\t")
        if name == queue:
            return int(depth)
    return 0


def test_first_message_on_a_fresh_vhost_is_answered(gw_rabbitmq, ledger):
    """Must hold: against a RabbitMQ vhost nothing has used yet, the very first message is answered
    within its wait, even when the gateway accepts it before any worker has started (a deploy, a fresh
    install: the worker is what used to declare the queue, and RabbitMQ drops a message routed to a
    queue that does not exist). The periodic requeue is paused, so only the first publish can deliver it."""
    gw = gw_rabbitmq
    vhost = f"fresh-{uuid.uuid4().hex[:8]}"
    env = {"CELERY_BROKER_URL": gw.rabbitmq.add_vhost(vhost)}
    gw.beat.stop()
    processes = []
    try:
        url = gw.stack.daphne(env=env)  # the gateway first: nothing has declared any queue on the vhost
        processes.append(gw.stack.processes[-1])
        text = f"first message on {vhost}"
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(http, "POST", f"{url}/api/v1/messages", {"message": text, "wait": 20},
                                  gw.auth, timeout=60)
            ledger.sent += 1
            wait_for_row(gw, text)  # accepted and handed to the broker
            processes.append(gw.stack.worker(env=env))  # the worker comes up after it
            status, body, _ = pending.result()
        ledger.answered += status == 200
        assert status == 200, body
        assert body["reply"]["message"] == f"Echo: {text}"
        counts = wait_until_answered(gw, [body["message_id"]])
        ledger.duplicates += max(0, counts[body["message_id"]] - 1)
        assert counts == {body["message_id"]: 1}
    finally:
        for process in processes:
            process.kill()
        gw.beat = gw.stack.beat()
        gw.rabbitmq.ctl("delete_vhost", vhost)


def test_rabbitmq_restarted_queued_runs_survive(gw_rabbitmq, ledger):
    """Must hold: runs queued while no worker consumes are kept through a RabbitMQ restart (durable
    queue, persistent messages) and answered exactly once afterwards, by the queue itself: the
    periodic requeue is paused until they are all answered."""
    gw = gw_rabbitmq
    for worker in gw.workers:
        worker.stop()
    gw.workers = []
    gw.beat.stop()
    try:
        # What beat queued before it stopped (its periodic requeue task) stays in the count.
        before = queue_depth(gw)
        accepted = accept_all(gw, ledger, [f"queued before the restart {i}" for i in range(5)])
        assert queue_depth(gw) == before + 5
        gw.rabbitmq.stop()
        ledger.faults += 1
        gw.rabbitmq.start()
        assert queue_depth(gw) == before + 5  # on disk, not only in the stopped node's memory
        gw.workers = [gw.stack.worker()]
        counts = wait_until_answered(gw, accepted, timeout=60)
    finally:
        gw.beat = gw.stack.beat()
        if not gw.workers:
            gw.workers = [gw.stack.worker()]
    ledger.answered += sum(1 for n in counts.values() if n)
    ledger.duplicates += sum(max(0, n - 1) for n in counts.values())
    assert set(counts.values()) == {1}, counts


@pytest.mark.parametrize("how", ["stop", "kill"], ids=["restarted", "crashed"])
def test_rabbitmq_restarted_during_traffic_loses_nothing(gw_rabbitmq, ledger, how):
    """Must hold: while RabbitMQ restarts (clean stop, or a crash: SIGKILL) under steady traffic with a
    run in flight, callers get answers, 503s or 504s — never a 500 — and afterwards the same Daphne,
    worker and beat (no restart) answer again; every message the gateway accepted is answered exactly
    once, the one in flight included (its unacknowledged delivery comes back after the restart)."""
    gw = gw_rabbitmq
    status, body, _ = post_message(gw, {"message": f"in flight at the broker {how} [[delay:3]]"})
    ledger.sent += 1
    assert status == 202, body
    in_flight = body["message_id"]
    wait_for_status(gw, in_flight, "processing")
    stop = threading.Event()
    outcomes: list[tuple[int, dict]] = []

    down = threading.Event()  # set only while the broker is stopped
    started_while_down = threading.Semaphore(0)

    def traffic(n: int) -> None:
        i = 0
        while not stop.is_set():
            if down.is_set():
                started_while_down.release()
            status, body, _ = post_message(gw, {"message": f"steady {how} {n}-{i}", "wait": 10}, timeout=30)
            outcomes.append((status, body if isinstance(body, dict) else {"raw": body}))
            i += 1
            time.sleep(0.05)  # pacing between one client's requests

    # The fault's window follows the traffic itself: answered before, requests sent into the outage,
    # answers again after.
    with ThreadPoolExecutor(3) as pool:
        for n in range(3):
            pool.submit(traffic, n)
        assert wait_until(lambda: sum(s == 200 for s, _ in outcomes) >= 3, timeout=30), "no traffic answered"
        gw.rabbitmq.stop() if how == "stop" else gw.rabbitmq.kill()
        down.set()
        ledger.faults += 1
        for _ in range(3):
            assert started_while_down.acquire(timeout=30), "no request was sent into the outage"
        down.clear()
        gw.rabbitmq.start()
        restarted_at = len(outcomes)
        assert wait_until(lambda: sum(s == 200 for s, _ in outcomes[restarted_at:]) >= 3, timeout=90), \
            "traffic was not answered again after the restart"
        stop.set()
    ledger.sent += len(outcomes)
    statuses = [status for status, _ in outcomes]
    ledger.errors_500 += sum(s >= 500 and s not in (503, 504) for s in statuses)
    assert set(statuses) <= {200, 503, 504}, [b for s, b in outcomes if s not in (200, 503, 504)][:3]
    # No manual step: the very same processes answer now.
    status, body = answered_after_recovery(gw, ledger, f"after the broker {how}")
    assert status == 200, body
    accepted = [in_flight] + [body["message_id"] for _s, body in outcomes if "message_id" in body]
    counts = wait_until_answered(gw, accepted, timeout=90)
    ledger.answered += sum(1 for n in counts.values() if n)
    ledger.duplicates += sum(max(0, n - 1) for n in counts.values())
    assert set(counts.values()) == {1}, {k: v for k, v in counts.items() if v != 1}

"""Processes and services die under the gateway: a worker, Redis, PostgreSQL.

Every test restores what it broke, so the next one starts from a healthy stack.
"""
from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest

from devtools.stack import http
from tests.helpers import wait_until

from .conftest import accept_all, post_message, sql, wait_until_answered

pytestmark = [pytest.mark.services, pytest.mark.e2e]


def wait_for_status(gw, message_id: str, status: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = sql(gw, "SELECT status FROM conversations_message WHERE id::text = %s", message_id)
        if rows and rows[0][0] == status:
            return
        time.sleep(0.1)
    raise AssertionError(f"message {message_id} never reached {status}")


def answered_after_recovery(gw, ledger, text: str, within_seconds: float = 30):
    """Send like a well-behaved client (retrying 503s after Retry-After) until answered or out of time."""
    deadline = time.monotonic() + within_seconds
    while True:
        status, body, headers = post_message(gw, {"message": text, "wait": 15})
        ledger.sent += 1
        if status == 200:
            ledger.answered += 1
        if status == 200 or time.monotonic() > deadline:
            return status, body
        time.sleep(float(headers.get("Retry-After") or 1) if status == 503 else 0.5)


def test_worker_killed_mid_run_is_answered_once_after_restart(gw, ledger):
    """Must hold: SIGKILL of the worker while the model call is in flight loses nothing — once a
    worker runs again (redelivery or the requeue task after the claim lease runs out) the message
    is answered, exactly once."""
    status, body, _ = post_message(gw, {"message": "long thought [[delay:2.5]]"})
    ledger.sent += 1
    assert status == 202, body
    message_id = body["message_id"]
    wait_for_status(gw, message_id, "processing")
    for worker in gw.workers:
        worker.kill()
    ledger.faults += 1
    gw.workers = [gw.stack.worker()]
    counts = wait_until_answered(gw, [message_id], timeout=60)
    ledger.answered += counts[message_id] > 0
    ledger.lost += not counts[message_id]
    ledger.duplicates += max(0, counts[message_id] - 1)
    assert counts[message_id] == 1
    (status_now, attempts), = sql(gw, "SELECT status, attempts FROM conversations_message WHERE id::text = %s",
                                  message_id)
    assert status_now == "answered" and attempts >= 2


@pytest.mark.parametrize("fault", ["pg_cancel_backend", "pg_terminate_backend"], ids=["cancelled", "killed"])
def test_database_fault_mid_run_is_retried_not_failed(gw, ledger, fault):
    """Must hold: when PostgreSQL cancels the worker's statement (statement timeout, deadlock,
    an operator) or ends its connection (a restart or failover does that to every backend) after the
    model has answered, the message is not failed and the answer is not paid for twice: the write is
    tried again, the message answered exactly once, with one model call logged."""
    status, body, _ = post_message(gw, {"message": f"think a moment ({fault}) [[delay:1.5]]"})
    ledger.sent += 1
    assert status == 202, body
    message_id = body["message_id"]
    wait_for_status(gw, message_id, "processing")
    # While the model answers, lock the tables the run writes next; once the worker waits on the
    # lock, cancel its statement or end its connection. The database itself stays up, so a run
    # that took the fault for a failed answer would manage to mark the message failed.
    with psycopg.connect(gw.database, connect_timeout=5) as conn:
        conn.execute("LOCK TABLE quotas_usagedaily, logs_llmcall IN ACCESS EXCLUSIVE MODE")
        deadline, hit = time.monotonic() + 20, []
        while not hit and time.monotonic() < deadline:
            time.sleep(0.05)
            conn.execute("SELECT pg_stat_clear_snapshot()")  # a transaction sees one snapshot otherwise
            hit = conn.execute(
                f"SELECT {fault}(pid) FROM pg_stat_activity WHERE datname = current_database() "
                "AND pid <> pg_backend_pid() AND wait_event_type = 'Lock' "
                "AND (query ILIKE '%%quotas_usagedaily%%' OR query ILIKE '%%logs_llmcall%%')"
            ).fetchall()
        assert hit, "the run never reached the locked tables"
        ledger.faults += 1
    counts = wait_until_answered(gw, [message_id], timeout=60)
    ledger.answered += counts[message_id] > 0
    ledger.lost += not counts[message_id]
    ledger.duplicates += max(0, counts[message_id] - 1)
    (status_now, attempts), = sql(gw, "SELECT status, attempts FROM conversations_message WHERE id::text = %s",
                                  message_id)
    assert (status_now, counts[message_id]) == ("answered", 1)
    calls = sql(gw, "SELECT status FROM logs_llmcall WHERE message_id::text = %s", message_id)
    assert calls == [("ok",)] and attempts == 1  # the paid-for answer was kept, not asked for again


def test_the_gevent_worker_rides_out_a_redis_restart_with_runs_in_flight(gw, ledger):
    """Must hold: the production worker (gevent pool) keeps running when Redis goes away under it
    with runs in flight and comes back: those runs are answered, exactly once, and so is what is
    sent after. (The threads pool's worker exits there: kombu fails to restore its unacked runs on
    a connection already closed; docs/brokers.md.)"""
    for worker in gw.workers:
        worker.stop()
    worker = gw.stack.worker(concurrency=50, pool="gevent")
    gw.workers = [worker]
    try:
        accepted = accept_all(gw, ledger, [f"in flight as Redis goes [[delay:2]] {i}" for i in range(4)])
        for message_id in accepted:
            wait_for_status(gw, message_id, "processing")
        port = gw.redis.port
        gw.redis.kill()
        ledger.faults += 1
        time.sleep(1)  # Redis stays away while the runs wait on the model
        gw.redis = gw.stack.redis(port=port)
        counts = wait_until_answered(gw, accepted, timeout=60)
        ledger.record(counts)
        assert set(counts.values()) == {1}, counts
        status, body = answered_after_recovery(gw, ledger, "after Redis came back")
        assert status == 200, body
        assert worker.popen.poll() is None, worker.log()[-3000:]  # the same process answered
    finally:
        worker.stop()
        gw.workers = [gw.stack.worker()]


def test_redis_down_then_back_every_accepted_message_is_answered(gw, ledger):
    """Must hold: while Redis is down, the API answers 503 with retry_after (retryable) or 202 —
    never a 500 — and /readyz says so; messages accepted before the outage whose queued tasks died
    with Redis are answered once Redis is back (the periodic requeue task), exactly once."""
    for worker in gw.workers:  # nothing consumes the queue: the tasks live only in Redis
        worker.stop()
    gw.workers = []
    accepted = accept_all(gw, ledger, [f"queued before outage {i}" for i in range(5)])
    port = gw.redis.port
    gw.redis.kill()  # the queue is gone: no persistence
    ledger.faults += 1
    try:
        during = []
        for i in range(5):
            status, body, headers = post_message(gw, {"message": f"during outage {i}"}, timeout=30)
            ledger.sent += 1
            ledger.errors_500 += status >= 500 and status != 503
            during.append((status, body))
            if status == 202:
                accepted.append(body["message_id"])
            else:
                assert status == 503, body
                assert body["error"]["code"] == "service_unavailable" and body["error"]["retry_after"] > 0
                assert int(headers["Retry-After"]) > 0
        ready_status, ready, _ = http("GET", f"{gw.url}/readyz")
        assert ready_status == 503 and ready["checks"]["redis"].startswith("error")
    finally:
        gw.redis = gw.stack.redis(port=port)
        gw.workers = [gw.stack.worker()]
    counts = wait_until_answered(gw, accepted, timeout=60)
    ledger.record(counts)
    assert set(counts.values()) == {1}, counts
    status, body = answered_after_recovery(gw, ledger, "after the outage")
    assert status == 200, body


def test_postgres_restarted_during_traffic_recovers_without_a_manual_step(gw, ledger):
    """Must hold: while PostgreSQL restarts under steady traffic, callers get answers, 503s or 504s
    — never a 500 — and afterwards the same processes (no restart) answer again; every message the
    gateway accepted is answered exactly once."""
    stop = threading.Event()
    down = threading.Event()  # set only while PostgreSQL is stopped
    outcomes: list[tuple[int, dict]] = []
    sent_while_down: list[int] = []

    started_while_down = threading.Semaphore(0)

    def traffic(n: int) -> None:
        i = 0
        while not stop.is_set():
            was_down = down.is_set()
            if was_down:
                started_while_down.release()
            status, body, _ = post_message(gw, {"message": f"steady {n}-{i}", "wait": 10}, timeout=30)
            outcomes.append((status, body if isinstance(body, dict) else {"raw": body}))
            if was_down:
                sent_while_down.append(status)
            i += 1
            time.sleep(0.05)  # pacing between one client's requests

    # The fault's window follows the traffic itself: answered before, requests sent into the outage,
    # answers again after.
    with ThreadPoolExecutor(3) as pool:
        for n in range(3):
            pool.submit(traffic, n)
        assert wait_until(lambda: sum(s == 200 for s, _ in outcomes) >= 3, timeout=30), "no traffic answered"
        gw.pg.stop("fast")
        down.set()
        ledger.faults += 1
        for _ in range(3):
            assert started_while_down.acquire(timeout=30), "no request was sent into the outage"
        down.clear()
        gw.pg.start()
        restarted_at = len(outcomes)
        assert wait_until(lambda: sum(s == 200 for s, _ in outcomes[restarted_at:]) >= 3, timeout=60), \
            "traffic was not answered again after the restart"
        stop.set()
    ledger.sent += len(outcomes)
    statuses = [status for status, _ in outcomes]
    ledger.errors_500 += sum(s >= 500 and s not in (503, 504) for s in statuses)
    assert set(statuses) <= {200, 503, 504}, [b for s, b in outcomes if s not in (200, 503, 504)][:3]
    assert sent_while_down, "no request was sent while PostgreSQL was down: the outage was not exercised"
    # No manual step: the very same Daphne and worker answer now.
    status, body = answered_after_recovery(gw, ledger, "after restart")
    assert status == 200, body
    accepted = [body["message_id"] for _s, body in outcomes if "message_id" in body]
    counts = wait_until_answered(gw, accepted, timeout=60)
    ledger.answered += sum(1 for n in counts.values() if n)
    ledger.duplicates += sum(max(0, n - 1) for n in counts.values())
    assert all(n <= 1 for n in counts.values()), counts
    rows = sql(gw, "SELECT status, count(*) FROM conversations_message WHERE id::text = ANY(%s) GROUP BY 1",
               accepted)
    ledger.lost += sum(n for status, n in rows if status not in ("answered", "failed"))  # failed: the sender was told
    assert {status for status, _n in rows} <= {"answered", "failed"}, rows

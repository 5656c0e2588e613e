"""Reliability suite: the whole gateway on its own PostgreSQL and Redis, with faults injected.

The stack here owns a *private* PostgreSQL cluster and a *private* redis-server on free ports, so
tests may kill and restart them without touching the shared services other test runs use. Leases,
visibility timeouts and the requeue period are set short so recovery happens within seconds.
Each test records what it did in ``ledger``; the run ends with a summary table.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from types import SimpleNamespace

import psycopg
import pytest

from gateway_project.stack import PrivatePostgres, Stack, base_env, http

FAST_RECOVERY_ENV = {
    "GATEWAY_AGENT_LEASE_SECONDS": "4",
    "CELERY_VISIBILITY_TIMEOUT_SECONDS": "6",
    "GATEWAY_REQUEUE_INTERVAL_SECONDS": "1",
    "GATEWAY_REQUEUE_ACCEPTED_AFTER_SECONDS": "2",
    "GATEWAY_USER_RATE": "100000/m",
    "GATEWAY_AUTH_FAILURES_PER_IP": "15",
    "GATEWAY_AUTH_FAILURE_WINDOW_SECONDS": "300",
    "GATEWAY_OUTAGE_RETRY_AFTER_SECONDS": "2",
    "LLM_TIMEOUT_SECONDS": "20",
    "LOG_LEVEL": "WARNING",
}


@dataclass
class Row:
    faults: int = 0
    sent: int = 0
    answered: int = 0
    duplicates: int = 0
    errors_500: int = 0
    notes: list[str] = field(default_factory=list)


_LEDGER: dict[str, Row] = {}


@pytest.fixture
def ledger(request) -> Row:
    """This test's row in the summary table."""
    return _LEDGER.setdefault(request.node.name, Row())


def pytest_terminal_summary(terminalreporter):
    if not _LEDGER:
        return
    terminalreporter.section("reliability summary")
    header = f"{'test':<70} {'faults':>6} {'sent':>6} {'answered':>8} {'dupes':>6} {'500s':>5}"
    terminalreporter.write_line(header)
    totals = Row()
    for name, row in _LEDGER.items():
        terminalreporter.write_line(
            f"{name.removeprefix('test_')[:70]:<70} {row.faults:>6} {row.sent:>6} {row.answered:>8} "
            f"{row.duplicates:>6} {row.errors_500:>5}"
        )
        for attr in ("faults", "sent", "answered", "duplicates", "errors_500"):
            setattr(totals, attr, getattr(totals, attr) + getattr(row, attr))
    terminalreporter.write_line(
        f"{'TOTAL':<70} {totals.faults:>6} {totals.sent:>6} {totals.answered:>8} {totals.duplicates:>6} "
        f"{totals.errors_500:>5}"
    )


@pytest.fixture(scope="session")
def gw():
    """fake_llm + private PostgreSQL + private Redis + Celery worker + beat + Daphne, seeded with the demo."""
    pg = PrivatePostgres()
    stack = Stack(base_env(**FAST_RECOVERY_ENV))
    try:
        pg.start()
        database = pg.create_database("gateway")
        redis_process = stack.redis()
        llm_url = stack.fake_llm()
        stack.env.update(DATABASE_URL=database, REDIS_URL=f"redis://127.0.0.1:{redis_process.port}/0",
                         OPENAI_BASE_URL=llm_url)
        stack.manage("migrate", "--noinput")
        demo = json.loads(stack.manage("seed_demo", "--json"))
        gateway = SimpleNamespace(stack=stack, pg=pg, database=database, redis=redis_process, llm_url=llm_url,
                                  demo=demo, workers=[stack.worker()], beat=stack.beat())
        gateway.url = stack.daphne()
        gateway.auth = {"Authorization": f"Bearer {demo['api_keys']['customer']}"}
        yield gateway
    except Exception:
        print(stack.logs())
        raise
    finally:
        stack.stop()
        pg.destroy()


def sql(gw, query: str, *params):
    """Rows of one query on the stack's database (a fresh connection: it may have restarted)."""
    with psycopg.connect(gw.database, connect_timeout=5) as conn:
        return conn.execute(query, params).fetchall()


def replies_per_message(gw, message_ids) -> dict[str, int]:
    """Agent replies stored per inbound message id (0 for an unanswered one)."""
    ids = [str(i) for i in message_ids]
    rows = sql(gw, "SELECT reply_to_id::text, count(*) FROM conversations_message "
                   "WHERE direction = 'out' AND reply_to_id::text = ANY(%s) GROUP BY 1", ids)
    counts = dict(rows)
    return {i: counts.get(i, 0) for i in ids}


def wait_until_answered(gw, message_ids, timeout: float = 60) -> dict[str, int]:
    """Poll the database until every message has a reply (or failed); returns replies_per_message."""
    deadline = time.monotonic() + timeout
    ids = [str(i) for i in message_ids]
    while True:
        rows = sql(gw, "SELECT id::text, status FROM conversations_message WHERE id::text = ANY(%s)", ids)
        if all(status in ("answered", "failed") for _id, status in rows) and len(rows) == len(ids):
            break
        if time.monotonic() > deadline:
            break
        time.sleep(0.25)
    return replies_per_message(gw, ids)


def post_message(gw, body, headers=None, timeout: float = 60):
    return http("POST", f"{gw.url}/api/v1/messages", body, {**gw.auth, **(headers or {})}, timeout=timeout)

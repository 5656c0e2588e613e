"""Attack suite: the running gateway (Daphne, a Celery worker, fake_llm) attacked from the outside.

The stack owns a private PostgreSQL cluster and a private redis-server, as the reliability suite
does, so attacks may leave users, keys and rules behind without touching other test runs. Each test
records its attack in ``attack``; the run ends with a table: attack, tries, admitted (must be 0),
audited (refusals found in the audit log).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from types import SimpleNamespace

import psycopg
import pytest

from apps.agents.models import Agent, LLMModel, Provider
from apps.connectors.models import Channel
from devtools.fake_platforms import FakePlatforms
from devtools.stack import PrivatePostgres, Stack, base_env

SECURITY_ENV = {
    "GATEWAY_USER_RATE": "100000/m",
    "LOG_LEVEL": "WARNING",
}


@dataclass
class Attack:
    tries: int = 0
    admitted: int = 0
    audited: int = 0

    def tried(self, admitted: bool, audited: bool = False) -> None:
        """One attempt: whether the gateway let it through, and whether it left an audit row."""
        self.tries += 1
        self.admitted += int(bool(admitted))
        self.audited += int(bool(audited))


_ATTACKS: dict[str, Attack] = {}


@pytest.fixture
def hidden(llm_model, fake_llm):
    """For the staff-scope tests: an admin-only agent on a provider of its own, and an admin-only
    channel it answers."""
    vault = Provider.objects.create(slug="vault", name="Vault LLM", base_url=fake_llm.base_url)
    model = LLMModel.objects.create(provider=vault, name="vault-gpt")
    agent = Agent.objects.create(slug="secret-ops", name="Secret ops", model=model, visibility="admin")
    channel = Channel.objects.create(slug="vip-desk", name="VIP desk", kind="api", default_agent=agent,
                                     visibility="admin")
    return agent, channel


@pytest.fixture
def attack(request) -> Attack:
    """This test's row in the summary table (one row per test)."""
    return _ATTACKS.setdefault(request.node.name.removeprefix("test_"), Attack())


def pytest_terminal_summary(terminalreporter):
    if not _ATTACKS:
        return
    terminalreporter.section("security summary")
    terminalreporter.write_line(f"{'attack':<72} {'tries':>6} {'admitted':>8} {'audited':>8}")
    total = Attack()
    for name, row in _ATTACKS.items():
        terminalreporter.write_line(f"{name[:72]:<72} {row.tries:>6} {row.admitted:>8} {row.audited:>8}")
        total.tries, total.admitted, total.audited = (
            total.tries + row.tries, total.admitted + row.admitted, total.audited + row.audited)
    terminalreporter.write_line(f"{'TOTAL':<72} {total.tries:>6} {total.admitted:>8} {total.audited:>8}")


@pytest.fixture(scope="session")
def sec():
    """fake_llm + private PostgreSQL + private Redis + Celery worker + Daphne, seeded with the demo."""
    pg = PrivatePostgres()
    stack = Stack(base_env(**SECURITY_ENV))
    platforms = FakePlatforms()
    platforms.start_in_thread()
    try:
        pg.start()
        database = pg.create_database("gateway")
        redis_process = stack.redis()
        llm_url = stack.fake_llm()
        stack.env.update(DATABASE_URL=database, REDIS_URL=f"redis://127.0.0.1:{redis_process.port}/0",
                         OPENAI_BASE_URL=llm_url, SLACK_API_BASE_URL=platforms.slack_base_url,
                         WECOM_API_BASE_URL=platforms.wecom_base_url,
                         # Replies to attack messages on these channels go to the stand-ins too:
                         # a test never reaches a platform's real host.
                         FEISHU_API_BASE_URL=platforms.feishu_base_url,
                         DINGTALK_API_BASE_URL=platforms.dingtalk_base_url,
                         DINGTALK_SESSION_WEBHOOK_BASE_URL=platforms.dingtalk_session_base_url)
        stack.manage("migrate", "--noinput")
        demo = json.loads(stack.manage("seed_demo", "--json"))
        gateway = SimpleNamespace(stack=stack, pg=pg, database=database, redis=redis_process, llm_url=llm_url,
                                  demo=demo, worker=stack.worker(), platforms=platforms)
        gateway.url = stack.daphne()
        yield gateway
    except Exception:
        print(stack.logs())
        raise
    finally:
        for process in stack.processes:  # throwaway stack: no graceful shutdown to wait for
            process.kill()
        pg.destroy()
        platforms.stop()


def sql(sec, query: str, *params):
    """Rows of one query on the stack's database."""
    with psycopg.connect(sec.database, connect_timeout=5) as conn:
        return conn.execute(query, params).fetchall()


def audited(sec, action: str, since_id: int = 0) -> int:
    """Audit rows with this action written after ``since_id``."""
    return sql(sec, "SELECT count(*) FROM logs_auditevent WHERE action = %s AND id > %s", action, since_id)[0][0]


def last_audit_id(sec) -> int:
    return sql(sec, "SELECT coalesce(max(id), 0) FROM logs_auditevent")[0][0]

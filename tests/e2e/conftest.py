"""End-to-end fixtures: real fake_llm, Daphne and Celery worker processes."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from devtools.fake_platforms import FakePlatforms
from devtools.stack import Stack, base_env, database_url


@pytest.fixture(scope="session")
def fake_platforms_live():
    """Local Slack / WeCom / CRM-callback servers, for every process of the stack."""
    server = FakePlatforms()
    server.start_in_thread()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def services_stack(django_db_setup, django_db_blocker, fake_platforms_live):
    """fake_llm + Celery worker + Daphne on the test database and Redis (services mode)."""
    from django.conf import settings

    stack = Stack(base_env(
        DATABASE_URL=database_url(settings.DATABASES["default"]), REDIS_URL=settings.REDIS_URL,
        CELERY_BROKER_URL=settings.CELERY_BROKER_URL,  # REDIS_URL, or RabbitMQ in CI's second run
        SLACK_API_BASE_URL=fake_platforms_live.slack_base_url, WECOM_API_BASE_URL=fake_platforms_live.wecom_base_url,
        FEISHU_API_BASE_URL=fake_platforms_live.feishu_base_url,
        DINGTALK_API_BASE_URL=fake_platforms_live.dingtalk_base_url,
        DINGTALK_SESSION_WEBHOOK_BASE_URL=fake_platforms_live.dingtalk_session_base_url,
        # A queue of its own: this session-long worker must not take the runs that in-process tests
        # queue (those tests run them themselves, or start workers of their own).
        GATEWAY_AGENT_QUEUE="e2e-session",
    ))
    try:
        llm_url = stack.fake_llm()
        stack.worker()
        url = stack.daphne()
        yield SimpleNamespace(stack=stack, url=url, llm_url=llm_url, platforms=fake_platforms_live)
    except Exception:
        print(stack.logs())
        raise
    finally:
        stack.stop()


@pytest.fixture(scope="session")
def embedded_stack(tmp_path_factory):
    """The embedded default, as `make run` starts it: SQLite, no Redis, one Daphne + fake_llm."""
    db_path = tmp_path_factory.mktemp("embedded") / "gateway.sqlite3"
    stack = Stack(base_env(DATABASE_URL=f"sqlite:///{db_path}",
                           GATEWAY_CONFIG_GENERATION_DIR=str(db_path.parent / "config-generation")))
    try:
        llm_url = stack.fake_llm()
        stack.env["OPENAI_BASE_URL"] = llm_url
        stack.manage("migrate", "--noinput")
        demo = json.loads(stack.manage("seed_demo", "--json"))
        url = stack.daphne()
        yield SimpleNamespace(stack=stack, url=url, llm_url=llm_url, demo=demo)
    except Exception:
        print(stack.logs())
        raise
    finally:
        stack.stop()

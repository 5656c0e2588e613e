"""Shared fixtures: role users, API keys, the LLM stand-in, demo channels and agents.

Tests marked ``services`` need PostgreSQL and Redis (DATABASE_URL + REDIS_URL). On the embedded
default they are skipped and listed at the end of the run; with GATEWAY_REQUIRE_SERVICES=1 (CI)
a missing service fails the run instead.
"""
from __future__ import annotations

import os
from decimal import Decimal

import pytest
from django.conf import settings

from apps.agents.models import Agent, LLMModel, Provider, Visibility
from apps.connectors.models import Channel
from apps.identities.models import ApiKey
from apps.identities.roles import Role, ensure_role_groups
from devtools.fake_llm import FakeLLMServer

SERVICES = bool(settings.REDIS_URL) and settings.DATABASES["default"]["ENGINE"].endswith("postgresql")
REQUIRE_SERVICES = os.environ.get("GATEWAY_REQUIRE_SERVICES") == "1"
SKIP_REASON = "needs PostgreSQL and Redis: set DATABASE_URL and REDIS_URL (as .ci/run does)"

_skipped_services: list[str] = []

# The gateway processes the end-to-end tests start (they inherit this environment) compare the
# configuration generation on every lookup instead of every second: each test creates its own
# channels and agents just before sending, and the database is emptied between tests without the
# ORM's signals. Production keeps the default interval (gateway_project/config_cache.py).
os.environ.setdefault("GATEWAY_CONFIG_CHECK_SECONDS", "0")
# Tests that drive the ASGI app in this process must not get the embedded default's recovery thread
# querying their database behind them (the server processes the e2e tests start keep it).
settings.GATEWAY_EMBEDDED_RECOVERY = False
# Test users are made by the hundred: hash their passwords cheaply (tests/helpers.py says why it is safe).
settings.PASSWORD_HASHERS = ["tests.helpers.FastPBKDF2PasswordHasher", *settings.PASSWORD_HASHERS]


# Session fixtures that start processes. Under pytest-xdist (`--dist loadgroup`, make test), the
# tests that use one run on the same worker, so each stack starts once per run, not once per worker;
# the other tests go by module, whose module-scoped fixtures then start once too.
SHARED_STACKS = ("sec", "gw", "gw_rabbitmq", "services_stack", "embedded_stack", "gevent_stack",
                 "live_server_stack")


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the groups
def pytest_collection_modifyitems(config, items):
    stacks = {}
    for item in items:
        stacks[item] = next((name for name in SHARED_STACKS if name in item.fixturenames), None)
        item.add_marker(pytest.mark.xdist_group(stacks[item] or item.nodeid.split("::")[0]))
    if os.environ.get("PYTEST_XDIST_WORKER"):
        # The long groups first, so that the run does not end on one worker finishing a stack's tests.
        items.sort(key=lambda item: SHARED_STACKS.index(stacks[item]) if stacks[item] else len(SHARED_STACKS))
    if SERVICES:
        return
    if REQUIRE_SERVICES:
        raise pytest.UsageError(
            "GATEWAY_REQUIRE_SERVICES=1 but DATABASE_URL (PostgreSQL) and REDIS_URL are not both set"
        )
    for item in items:
        if "services" in item.keywords:
            item.add_marker(pytest.mark.skip(reason=SKIP_REASON))
            _skipped_services.append(item.nodeid)


def pytest_sessionstart(session):
    if not (SERVICES and REQUIRE_SERVICES):
        return
    import psycopg
    import redis

    # Fail fast and clearly when CI's services are down, rather than test by test.
    redis.Redis.from_url(settings.REDIS_URL, socket_timeout=3).ping()
    db = settings.DATABASES["default"]
    psycopg.connect(
        host=db["HOST"] or "localhost", port=db["PORT"] or 5432, user=db["USER"],
        password=db["PASSWORD"], dbname="postgres", connect_timeout=3,
    ).close()


def pytest_terminal_summary(terminalreporter):
    if _skipped_services:
        terminalreporter.section("service-backed tests skipped")
        terminalreporter.write_line(f"{len(_skipped_services)} tests skipped: {SKIP_REASON}")
        for nodeid in _skipped_services:
            terminalreporter.write_line(f"  {nodeid}")


@pytest.fixture(autouse=True)
def _no_llm_backoff(settings):
    """Retries of model calls happen at once in tests (backoff is tested as a function)."""
    settings.GATEWAY_LLM_BACKOFF_BASE_SECONDS = 0
    settings.GATEWAY_LLM_RETRY_AFTER_MAX_SECONDS = 0


# --- people ------------------------------------------------------------------------------


@pytest.fixture
def roles(db):
    return ensure_role_groups()


@pytest.fixture
def make_user(roles, django_user_model):
    counter = iter(range(1, 10_000))

    def make(role: str | None = Role.CUSTOMER, **fields):
        fields.setdefault("username", f"{role or 'nobody'}-{next(counter)}-{os.urandom(3).hex()}")
        user = django_user_model.objects.create_user(password="pw-for-tests", **fields)
        if role:
            user.groups.add(roles[role])
        return user

    return make


@pytest.fixture
def customer(make_user):
    return make_user(Role.CUSTOMER)


@pytest.fixture
def employee(make_user):
    return make_user(Role.EMPLOYEE)


@pytest.fixture
def admin_user(make_user):
    return make_user(Role.ADMIN, is_staff=True)


@pytest.fixture
def outsider(make_user):
    """Signed up, but in no role: owns nothing and may use nothing beyond the basics."""
    return make_user(None)


@pytest.fixture
def api_key_for(db):
    def issue(user) -> str:
        return ApiKey.generate(user=user, name="test")[1]

    return issue


# --- the LLM stand-in and the demo setup ------------------------------------------------------


@pytest.fixture(scope="session")
def fake_llm():
    """The OpenAI-compatible stand-in, in this process, on a free port."""
    server = FakeLLMServer()
    server.start_in_thread()
    yield server
    server.stop()


@pytest.fixture
def provider(db, fake_llm):
    return Provider.objects.create(slug="fake", name="Fake", base_url=fake_llm.base_url, timeout_seconds=10)


@pytest.fixture
def llm_model(provider):
    return LLMModel.objects.create(
        provider=provider, name="fake-gpt",
        input_price_per_1k=Decimal("0.001"), output_price_per_1k=Decimal("0.002"),
    )


@pytest.fixture
def agent(llm_model):
    return Agent.objects.create(
        slug="assistant", name="Assistant", model=llm_model, system_prompt="Be brief.",
        visibility=Visibility.PUBLIC, max_tokens=200,
    )


@pytest.fixture
def tools(db):
    """The built-in tools, synced to Tool rows."""
    from apps.agents.services import tool_sync

    return {tool.slug: tool for tool in tool_sync()}


@pytest.fixture
def tool_agent(agent, tools):
    """The assistant agent, allowed every built-in tool (permissions still apply per user)."""
    agent.tools.set(tools.values())
    return agent


@pytest.fixture
def api_channel(agent):
    return Channel.objects.create(slug="api", name="API", kind="api", default_agent=agent)


@pytest.fixture
def webchat_channel(agent):
    return Channel.objects.create(slug="web", name="Web chat", kind="webchat", default_agent=agent)


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup, django_db_blocker):
    """Close the PostgreSQL connection pool before the test database is dropped (its idle
    connections would keep the database in use), then end any session still on it."""
    yield
    import asyncio

    from asgiref.sync import sync_to_async
    from django.db import connections

    with django_db_blocker.unblock():
        # Async tests' ORM calls (``aget``, ``async for``) run on asgiref's one shared thread,
        # whose connection outlives them: give it back too.
        asyncio.run(sync_to_async(connections.close_all)())
        for conn in connections.all(initialized_only=True):
            if getattr(conn, "pool", None) is not None:
                conn.close_pool()
        default = connections["default"]
        if default.vendor == "postgresql":
            # This thread's own connection is closed by the drop itself.
            own = default.connection.info.backend_pid if default.connection is not None else 0
            _end_sessions_left_on(default.settings_dict, besides=own)


def _end_sessions_left_on(db: dict, besides: int) -> None:
    """A connection the pool lent to another thread and never got back (a background thread
    started by a test, still holding one) keeps the test database from being dropped: end it,
    and say what it last ran, so the thread can be found. (One was asgiref's shared thread.)"""
    import warnings

    import psycopg

    with psycopg.connect(host=db["HOST"] or None, port=db["PORT"] or None, user=db["USER"] or None,
                         password=db["PASSWORD"] or None, dbname="postgres", autocommit=True) as admin:
        left = admin.execute(
            "SELECT pid, state, left(query, 200), pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid() AND pid <> %s", (db["NAME"], besides)).fetchall()
    for pid, state, query, _ in left:
        warnings.warn(f"a session was still on the test database at the end (pid {pid}, {state}), "
                      f"ended; its last statement: {query}", stacklevel=1)


@pytest.fixture(autouse=True)
def _queue_agent_runs_to_the_broker(settings):
    """Unit tests run agents themselves (``agent_run``), as a worker would. Accepted messages go
    to the broker (memory:// on the embedded default), not to background threads that would
    outlive the test; the end-to-end tests run real workers."""
    settings.GATEWAY_AGENT_DISPATCH = "celery"


@pytest.fixture(autouse=True)
def _own_limit_counters(settings):
    """Each test counts on its own rate/quota keys and sees policy and IP-rule edits at once."""
    from gateway_project import config_cache

    settings.GATEWAY_LIMIT_KEY_PREFIX = f"t{os.urandom(6).hex()}"
    config_cache.clear()

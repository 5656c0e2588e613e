"""GATEWAY_PLAIN selects each library's own path instead of the gateway's override (measured by
bench/overrides_ab.py), and refuses a name it does not know at startup."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import adrf.views
import openai.resources.chat.completions
import pytest
from channels.db import DatabaseSyncToAsync
from django.core.exceptions import ImproperlyConfigured
from django.db import connection
from django.test.utils import CaptureQueriesContext

from apps.agents import llm
from apps.conversations.models import Conversation
from gateway_project import plain
from gateway_project.db import Update, database_sync_to_async, write_together

BASE_DIR = Path(__file__).resolve().parent.parent
SETTINGS_PROBE = """
import json
import django
django.setup()
from django.conf import settings
print(json.dumps({
    "middleware": settings.MIDDLEWARE, "cache": settings.CACHES["default"],
}))
"""


def run_with(gateway_plain: str, code: str = SETTINGS_PROBE) -> subprocess.CompletedProcess:
    """A fresh process loading the settings in services mode (nothing is connected to)."""
    env = {**os.environ, "GATEWAY_PLAIN": gateway_plain, "DJANGO_SETTINGS_MODULE": "gateway_project.settings",
           "DATABASE_URL": "postgres://postgres@127.0.0.1:1/unused", "REDIS_URL": "redis://127.0.0.1:1/0"}
    return subprocess.run([sys.executable, "-c", code], cwd=BASE_DIR, env=env, capture_output=True, text=True,
                          timeout=120)


def settings_with(gateway_plain: str) -> dict:
    done = run_with(gateway_plain)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_settings_switches_select_the_libraries_own_classes():
    ours, theirs = settings_with(""), settings_with("redis_pool,middleware")

    assert "gateway_project.middleware.SessionMiddleware" in ours["middleware"]
    assert not any(path.startswith("gateway_project.") for path in theirs["middleware"])
    assert theirs["middleware"][1] == "django.middleware.security.SecurityMiddleware"
    assert "django.contrib.sessions.middleware.SessionMiddleware" in theirs["middleware"]
    assert len(theirs["middleware"]) == len(ours["middleware"])

    assert ours["cache"]["OPTIONS"]["pool_class"] == "gateway_project.redis_pool.SharedConnectionPool"
    assert theirs["cache"]["BACKEND"] == "django.core.cache.backends.redis.RedisCache"
    assert "OPTIONS" not in theirs["cache"]


def test_an_unknown_name_is_refused_at_startup():
    done = run_with("middleware,bogus")

    assert done.returncode != 0
    assert "GATEWAY_PLAIN names unknown override(s): bogus" in done.stderr
    with pytest.raises(ImproperlyConfigured, match="Known: redis_pool"):
        plain.parse("raw_sql, nope")
    assert plain.parse(" raw_sql, ,middleware ") == {"raw_sql", "middleware"}


def test_asgiref_executor(settings):
    assert not isinstance(database_sync_to_async(len), DatabaseSyncToAsync)

    settings.GATEWAY_PLAIN = frozenset({"asgiref_executor"})
    assert isinstance(database_sync_to_async(len), DatabaseSyncToAsync)


def test_openai_create(settings, llm_model, monkeypatch):
    calls = []
    create = openai.resources.chat.completions.Completions.create

    def spy(self, **params):
        calls.append(params)
        return create(self, **params)

    monkeypatch.setattr(openai.resources.chat.completions.Completions, "create", spy)
    messages = [{"role": "user", "content": "hello"}]
    ours = llm.chat(llm_model, messages)
    assert calls == []

    settings.GATEWAY_PLAIN = frozenset({"openai_create"})
    theirs = llm.chat(llm_model, messages)
    streamed = llm.chat(llm_model, messages, on_delta=lambda piece: None)
    assert [call["stream"] for call in calls[1:]] == [True] and "stream" not in calls[0]
    assert theirs.text == ours.text == streamed.text and theirs.total_tokens == ours.total_tokens > 0


def test_adrf_dispatch(settings, client, monkeypatch, db):
    calls = []
    dispatch = adrf.views.APIView.async_dispatch

    async def spy(self, request, *args, **kwargs):
        calls.append(request.path)
        return await dispatch(self, request, *args, **kwargs)

    monkeypatch.setattr(adrf.views.APIView, "async_dispatch", spy)
    assert client.post("/api/v1/messages", {}, content_type="application/json").status_code == 401
    assert calls == []

    settings.GATEWAY_PLAIN = frozenset({"adrf_dispatch"})
    assert client.post("/api/v1/messages", {}, content_type="application/json").status_code == 401
    assert calls == ["/api/v1/messages"]


@pytest.mark.skipif(connection.vendor != "postgresql", reason="the one-statement writes are PostgreSQL's")
def test_one_statement_writes(settings, api_channel, customer):
    def statements(conversation: Conversation, new: Conversation) -> list[str]:
        with CaptureQueriesContext(connection) as captured:
            write_together(Update(Conversation, conversation.pk, {"external_thread_id": "t"}), new)
        # Savepoints aside (the test runs in a transaction): the statements that write.
        return [query["sql"] for query in captured.captured_queries if "SAVEPOINT" not in query["sql"]]

    first = Conversation.objects.create(channel=api_channel, user=customer)
    ours = statements(first, Conversation(channel=api_channel, user=customer))
    assert len(ours) == 1 and ours[0].startswith("WITH written AS (UPDATE")

    settings.GATEWAY_PLAIN = frozenset({"one_statement_writes"})
    theirs = statements(first, Conversation(channel=api_channel, user=customer))
    assert any(sql.startswith("UPDATE") for sql in theirs) and any(sql.startswith("INSERT") for sql in theirs)
    assert not any("WITH written" in sql for sql in theirs)

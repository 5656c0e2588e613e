"""Scale check for the dashboards: fill the logs with 1 million model-call rows and time each page.

Needs PostgreSQL (DATABASE_URL). Use a database of its own — the script migrates it and, with
--reset, empties the log and conversation tables first:

    createdb gateway_bench
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/gateway_bench \\
        .venv/bin/python bench/dashboard_bench.py --reset --calls 1000000

Model calls and request-log rows are generated inside PostgreSQL (INSERT ... SELECT over
generate_series); conversations and messages go through bulk_create. Then the daily rollups are
rebuilt (as the beat task does) and every dashboard page is rendered through Django's test client
as a staff user, several times; the median and worst render times are printed and written to
bench/results/dashboard.json. Not part of the test run.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
import uuid
from datetime import timedelta
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(BASE_DIR))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "gateway_project.settings")

import django  # noqa: E402

django.setup()

from django.conf import settings  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import connection, transaction  # noqa: E402
from django.test import Client  # noqa: E402
from django.utils import timezone  # noqa: E402

from apps.agents.models import Agent, LLMModel, Provider  # noqa: E402
from apps.connectors.models import Channel  # noqa: E402
from apps.conversations.models import Conversation, Message  # noqa: E402
from apps.identities.models import ApiKey, User  # noqa: E402
from apps.identities.roles import Role, ensure_role_groups  # noqa: E402
from apps.logs.rollups import rollup_days  # noqa: E402

PREFIX = "bench"


def log(text: str) -> None:
    print(text, flush=True)


def timed(label: str, fn, *args, **kwargs):
    started = time.perf_counter()
    result = fn(*args, **kwargs)
    log(f"  {label}: {time.perf_counter() - started:.1f} s")
    return result


def reset() -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            "TRUNCATE logs_llmcall, logs_requestlog, logs_dailycallstats, logs_dailymessagestats, "
            "logs_dailyrequeststats, conversations_message, conversations_conversation CASCADE"
        )


def setup_rows(users: int):
    roles = ensure_role_groups()
    provider, _ = Provider.objects.get_or_create(slug=f"{PREFIX}-provider", defaults={
        "name": "Bench", "base_url": "http://127.0.0.1:9/v1"})
    models = [LLMModel.objects.get_or_create(provider=provider, name=name)[0]
              for name in ("gpt-large", "gpt-small", "local-llama")]
    agents = [Agent.objects.get_or_create(slug=f"{PREFIX}-agent-{i}", defaults={
        "name": f"Agent {i}", "model": models[i % len(models)]})[0] for i in range(3)]
    channels = [Channel.objects.get_or_create(slug=slug, defaults={"name": slug, "kind": kind,
                                                                   "default_agent": agents[0]})[0]
                for slug, kind in ((f"{PREFIX}-api", "api"), (f"{PREFIX}-web", "webchat"),
                                   (f"{PREFIX}-web2", "webchat"))]
    existing = list(User.objects.filter(username__startswith=f"{PREFIX}-user-"))
    new = [User(username=f"{PREFIX}-user-{i}") for i in range(len(existing), users)]
    User.objects.bulk_create(new)
    people = list(User.objects.filter(username__startswith=f"{PREFIX}-user-"))
    roles[Role.CUSTOMER].user_set.add(*people)
    keys = list(ApiKey.objects.filter(user__in=people))
    if not keys:
        keys = [ApiKey.generate(user=user, name="bench")[0] for user in people]
    staff, created = User.objects.get_or_create(username=f"{PREFIX}-staff", defaults={"is_staff": True})
    staff.groups.add(roles[Role.ADMIN])
    return {"agents": agents, "channels": channels, "users": people, "keys": keys, "staff": staff,
            "models": models}


def fill_conversations(rows: dict, conversations: int, days: int) -> None:
    rng = random.Random(7)
    now = timezone.now()
    words = ("order parcel refund invoice password login shipping delay broken thanks hello help "
             "account upgrade cancel price discount warranty").split()
    batch_conv, batch_msg = [], []
    for n in range(conversations):
        user = rng.choice(rows["users"])
        channel = rng.choice(rows["channels"])
        agent = rng.choice(rows["agents"])
        started = now - timedelta(seconds=rng.uniform(0, days * 86400))
        conv = Conversation(id=uuid.uuid4(), channel=channel, user=user, agent=agent)
        conv.created_at = started
        conv.last_message_at = started + timedelta(seconds=60)
        batch_conv.append(conv)
        for turn in range(2):
            at = started + timedelta(seconds=turn * 30)
            failed = rng.random() < 0.03
            inbound = Message(
                id=uuid.uuid4(), conversation=conv, channel=channel, direction="in",
                status="failed" if failed else "answered", sender=user, agent=agent,
                text=" ".join(rng.choices(words, k=8)), error_code="provider_error" if failed else "",
            )
            inbound.created_at = inbound.updated_at = at
            batch_msg.append(inbound)
            if not failed:
                reply = Message(
                    id=uuid.uuid4(), conversation=conv, channel=channel, direction="out", status="sent",
                    reply_to=inbound, agent=agent, text="Sure: " + " ".join(rng.choices(words, k=12)),
                    model=agent.model.name, prompt_tokens=120, completion_tokens=40, total_tokens=160,
                    latency_ms=int(rng.lognormvariate(6.8, 0.6)),
                )
                reply.created_at = reply.updated_at = at + timedelta(seconds=2)
                batch_msg.append(reply)
        if len(batch_conv) >= 2000 or n == conversations - 1:
            times = {c.id: (c.created_at, c.last_message_at) for c in batch_conv}
            times.update({m.id: m.created_at for m in batch_msg})
            with transaction.atomic():
                Conversation.objects.bulk_create(batch_conv)
                Message.objects.bulk_create(batch_msg)
                # auto_now/auto_now_add overwrote the generated times (on the instances too, so
                # they were kept aside before bulk_create); put them back in one statement each.
                with connection.cursor() as cursor:
                    cursor.executemany("UPDATE conversations_conversation SET created_at=%s, last_message_at=%s "
                                       "WHERE id=%s", [(*times[c.id], c.id) for c in batch_conv])
                    cursor.executemany("UPDATE conversations_message SET created_at=%s WHERE id=%s",
                                       [(times[m.id], m.id) for m in batch_msg])
            batch_conv, batch_msg = [], []


def fill_calls(calls: int, days: int) -> None:
    """1 LLM call per inbound message on average, plus retries; generated inside PostgreSQL."""
    with connection.cursor() as cursor:
        cursor.execute("DROP TABLE IF EXISTS bench_inbound")
        cursor.execute(
            "CREATE TEMP TABLE bench_inbound AS SELECT row_number() OVER (ORDER BY m.created_at) AS rn, m.id, "
            "m.conversation_id, m.sender_id, m.channel_id, m.agent_id, m.created_at, k.id AS api_key_id "
            "FROM conversations_message m LEFT JOIN identities_apikey k ON k.user_id = m.sender_id "
            "WHERE m.direction = 'in'"
        )
        cursor.execute("SELECT count(*) FROM bench_inbound")
        inbound = cursor.fetchone()[0]
        cursor.execute("CREATE INDEX ON bench_inbound (rn)")
        cursor.execute(
            """
            INSERT INTO logs_llmcall (message_id, conversation_id, user_id, channel_id, agent_id, api_key_id,
                request_id, model, provider, attempt, prompt_tokens, completion_tokens, total_tokens, cost,
                latency_ms, ttft_ms, status, error, created_at)
            SELECT b.id, b.conversation_id, b.sender_id, b.channel_id, b.agent_id, b.api_key_id,
                md5(g::text), (ARRAY['gpt-large','gpt-small','local-llama'])[1 + g %% 3], 'bench-provider',
                1 + (g %% 17 = 0)::int, 100 + g %% 400, 20 + g %% 200, 120 + g %% 400 + g %% 200,
                ((100 + g %% 400) * 0.0005 + (20 + g %% 200) * 0.0015) / 1000,
                200 + (random() * 3000)::int, 50 + (random() * 400)::int,
                CASE WHEN g %% 33 = 0 THEN 'error' ELSE 'ok' END,
                CASE WHEN g %% 33 = 0 THEN 'provider_error: HTTP 500 from the model provider' ELSE '' END,
                b.created_at + (random() * interval '20 seconds')
            FROM generate_series(1, %s) AS g
            JOIN bench_inbound b ON b.rn = 1 + (g %% %s)
            """,
            [calls, inbound],
        )
        cursor.execute(
            """
            INSERT INTO logs_requestlog (channel_id, channel_kind, user_id, message_id, api_key_id, status_code,
                rejection, client_ip, latency_ms, request_id, created_at)
            SELECT b.channel_id, 'api', b.sender_id, b.id, b.api_key_id,
                CASE WHEN g %% 40 = 0 THEN 429 WHEN g %% 97 = 0 THEN 401 ELSE 202 END,
                CASE WHEN g %% 40 = 0 THEN 'rate_limited' WHEN g %% 97 = 0 THEN 'unauthenticated' ELSE '' END,
                '203.0.113.7', 5 + (random() * 40)::int, md5(g::text), b.created_at
            FROM generate_series(1, %s) AS g
            JOIN bench_inbound b ON b.rn = 1 + (g %% %s)
            """,
            [calls // 2, inbound],
        )
        cursor.execute("ANALYZE")


def time_pages(staff, runs: int, days: int) -> dict:
    client = Client()
    client.force_login(staff)
    today = timezone.localdate()
    period = {"from": (today - timedelta(days=days - 1)).isoformat(), "to": today.isoformat()}
    conversation = Conversation.objects.order_by("-last_message_at").first()
    pages = {
        "overview": ("/dashboard/", period),
        "cost": ("/dashboard/cost/", period),
        "conversations": ("/dashboard/conversations/", period),
        "conversations search text": ("/dashboard/conversations/", {**period, "text": "refund warranty"}),
        "conversations search user": ("/dashboard/conversations/", {**period, "user": "bench-user-42"}),
        "conversation": (f"/dashboard/conversations/{conversation.id}/", {}),
        "errors": ("/dashboard/errors/", period),
        "cost csv (by user)": ("/dashboard/cost/", {**period, "export": "user"}),
    }
    results = {}
    for name, (path, query) in pages.items():
        timings = []
        for _ in range(runs):
            started = time.perf_counter()
            response = client.get(path, query)
            timings.append((time.perf_counter() - started) * 1000)
            assert response.status_code == 200, (name, response.status_code)
        results[name] = {"median_ms": round(statistics.median(timings), 1), "max_ms": round(max(timings), 1)}
        log(f"  {name:28s} median {results[name]['median_ms']:7.1f} ms   max {results[name]['max_ms']:7.1f} ms")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=1_000_000, help="LLM call rows to generate")
    parser.add_argument("--conversations", type=int, default=100_000)
    parser.add_argument("--users", type=int, default=2_000)
    parser.add_argument("--days", type=int, default=30, help="spread the rows over this many days")
    parser.add_argument("--runs", type=int, default=5, help="renders per page")
    parser.add_argument("--reset", action="store_true", help="empty the log and conversation tables first")
    parser.add_argument("--skip-fill", action="store_true", help="reuse the rows of a previous run")
    args = parser.parse_args()
    if not settings.DATABASES["default"]["ENGINE"].endswith("postgresql"):
        sys.exit("The benchmark needs PostgreSQL: set DATABASE_URL.")
    log(f"database {settings.DATABASES['default']['NAME']}")
    call_command("migrate", verbosity=0)
    report: dict = {"calls": args.calls, "conversations": args.conversations, "days": args.days}
    if args.reset:
        reset()
    rows = setup_rows(args.users)
    if not args.skip_fill:
        log("filling")
        timed(f"{args.conversations} conversations, ~{args.conversations * 4} messages", fill_conversations, rows,
              args.conversations, args.days)
        report["fill_calls_s"] = timed(f"{args.calls} LLM calls + {args.calls // 2} request rows (SQL)", fill_calls,
                                       args.calls, args.days) or None
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM logs_llmcall")
        report["llm_call_rows"] = cursor.fetchone()[0]
    log(f"logs_llmcall rows: {report['llm_call_rows']}")
    today = timezone.localdate()
    started = time.perf_counter()
    rollup_days([today - timedelta(days=n) for n in range(args.days + 1)])
    report["rollup_all_days_s"] = round(time.perf_counter() - started, 2)
    started = time.perf_counter()
    rollup_days([today])
    report["rollup_one_day_s"] = round(time.perf_counter() - started, 2)
    log(f"rollups: all {args.days + 1} days {report['rollup_all_days_s']} s, one day {report['rollup_one_day_s']} s")
    log(f"render times ({args.runs} runs each, Django test client, PostgreSQL):")
    report["pages"] = time_pages(rows["staff"], args.runs, args.days)
    out = BASE_DIR / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "dashboard.json").write_text(json.dumps(report, indent=2))
    log(f"written {out / 'dashboard.json'}")


if __name__ == "__main__":
    main()

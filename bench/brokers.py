"""Throughput of the messages API with each Celery broker, at a realistic model latency.

    BENCH_DATABASE_URL=postgres://… BENCH_REDIS_URL=redis://…/N \
    BENCH_RABBITMQ_URL=amqp://guest:guest@127.0.0.1:5672/<vhost> python bench/brokers.py

For each broker (Redis, then RabbitMQ; Redis stays the channel layer and cache in both): fake_llm
answering after BENCH_LLM_DELAY_MS (1000), one Daphne, one Celery worker (threads pool,
BENCH_WORKER_CONCURRENCY, 250), and bench/load.py sending BENCH_REQUESTS (1000) messages with
``wait`` at BENCH_CONCURRENCY (200) after a warm-up. BENCH_BROKERS: the order (redis,rabbitmq).
Prints one JSON line per broker and a table.
The database is dropped and created again; the Redis db is flushed: give it ones of its own.
"""
from __future__ import annotations

import json
import os
import sys
import urllib.parse
from pathlib import Path

BASE = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(BASE))

from bench.run import load, log  # noqa: E402
from devtools.stack import Stack, base_env  # noqa: E402

DATABASE_URL = os.environ["BENCH_DATABASE_URL"]
REDIS_URL = os.environ["BENCH_REDIS_URL"]
RABBITMQ_URL = os.environ["BENCH_RABBITMQ_URL"]
LLM_DELAY_MS = os.environ.get("BENCH_LLM_DELAY_MS", "1000")
REQUESTS = int(os.environ.get("BENCH_REQUESTS", "1000"))
CONCURRENCY = int(os.environ.get("BENCH_CONCURRENCY", "200"))
WORKER_CONCURRENCY = int(os.environ.get("BENCH_WORKER_CONCURRENCY", "250"))


def fresh_services() -> None:
    import psycopg
    import redis

    parsed = urllib.parse.urlparse(DATABASE_URL)
    with psycopg.connect(parsed._replace(path="/postgres").geturl(), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{parsed.path[1:]}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{parsed.path[1:]}"')
    redis.Redis.from_url(REDIS_URL).flushdb()


def run(broker: str, broker_url: str) -> dict:
    fresh_services()
    stack = Stack(base_env(DATABASE_URL=DATABASE_URL, REDIS_URL=REDIS_URL, CELERY_BROKER_URL=broker_url,
                           GATEWAY_USER_RATE="100000000/m", LOG_LEVEL="WARNING"))
    try:
        stack.env["OPENAI_BASE_URL"] = stack.fake_llm("--delay-ms", LLM_DELAY_MS)
        stack.manage("migrate", "--noinput")
        demo = json.loads(stack.manage("seed_demo", "--json"))
        stack.worker(concurrency=WORKER_CONCURRENCY)
        url = stack.daphne()
        log(f"{broker}: {REQUESTS} messages with wait at concurrency {CONCURRENCY}, model latency {LLM_DELAY_MS} ms")
        result = load({
            "kind": "http", "url": f"{url}/api/v1/messages", "count": REQUESTS, "concurrency": CONCURRENCY,
            "warmup": CONCURRENCY, "timeout": 600, "request_timeout": 60,
            "headers": {"Authorization": f"Bearer {demo['api_keys']['customer']}"},
            "body": {"message": "benchmark hello", "wait": 30},
        })
    except Exception:
        print(stack.logs())
        raise
    finally:
        stack.stop()
    return {"broker": broker, **{k: result[k] for k in ("ok", "errors", "seconds", "rps", "p50_ms", "p95_ms",
                                                         "p99_ms", "warmup_errors")}}


def main() -> None:
    import resource

    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # the children inherit it
    urls = {"redis": REDIS_URL, "rabbitmq": RABBITMQ_URL}
    rows = [run(broker, urls[broker]) for broker in os.environ.get("BENCH_BROKERS", "redis,rabbitmq").split(",")]
    for row in rows:
        print(json.dumps(row))
    print(f"\nmodel latency {LLM_DELAY_MS} ms, concurrency {CONCURRENCY}, {REQUESTS} messages with wait, "
          f"worker threads {WORKER_CONCURRENCY}, {os.cpu_count()} CPUs\n")
    print("| broker | answered | errors | msg/s | p50 ms | p95 ms | p99 ms |\n|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['broker']} | {row['ok']} | {row['errors'] or 0} | {row['rps']} | {row['p50_ms']} | "
              f"{row['p95_ms']} | {row['p99_ms']} |")


if __name__ == "__main__":
    main()

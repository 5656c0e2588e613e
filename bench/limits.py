"""What the limit step adds to each request, at 100 concurrent callers (not part of the test run).

    DATABASE_URL=... REDIS_URL=... python bench/limits.py [--concurrency 100] [--requests 10000]

Against the configured database (migrated) and Redis; without them, the embedded default (SQLite,
local-memory cache, process-local ledger). It creates throwaway users, a channel, policies (a rate,
token and cost budgets per user) and an IP rule, then times from ``--concurrency`` threads started
together:

- ``limit_step``: what the pipeline runs per message (``check_ip_rules`` + ``check_limits``: the
  per-user rate on the shared cache and the budget entry check on the ledger);
- ``model_call_hooks``: what ``call_model`` adds per model call (reserve before, settle after,
  including the daily rollup write);
- ``harness``: the same threads doing nothing, the floor of the measurement;
- ``*_alone``: the same work from one thread, i.e. without queueing behind the other 99.

At 100 concurrent in one process the latency is mostly waiting for the GIL and the connections
(Little's law: concurrency / throughput); the ``_alone`` rows are what one request pays.

Prints one JSON line (``measure()`` returns the same dict; ``bench/run.py`` uses it), then a summary.
Everything it created is deleted at the end.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
import uuid
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _percentiles(samples: list[float]) -> dict:
    samples = sorted(samples)
    pick = lambda q: round(samples[min(len(samples) - 1, int(len(samples) * q))] * 1000, 3)  # noqa: E731
    return {"calls": len(samples), "p50_ms": pick(0.50), "p99_ms": pick(0.99), "max_ms": pick(1.0)}


def _timed(concurrency: int, per_thread: int, work) -> dict:
    """Run ``work(thread_index, n)`` ``per_thread`` times in each of ``concurrency`` threads."""
    barrier = threading.Barrier(concurrency)
    samples: list[list[float]] = [[] for _ in range(concurrency)]
    errors: list[str] = []

    def run(index: int) -> None:
        from django.db import connection

        barrier.wait()
        try:
            for n in range(per_thread):
                started = time.perf_counter()
                work(index, n)
                samples[index].append(time.perf_counter() - started)
        except Exception as exc:  # reported, not hidden
            errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(concurrency)]
    wall = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - wall
    result = _percentiles([s for per in samples for s in per])
    result.update({"throughput_per_s": round(result["calls"] / wall), "errors": errors[:3]})
    return result


def measure(*, concurrency: int = 100, requests: int = 10_000) -> dict:
    from django.conf import settings

    from apps.connectors.models import Channel
    from apps.identities.models import User
    from apps.identities.roles import Role, ensure_role_groups
    from apps.quotas import budgets
    from apps.quotas.iprules import check_ip_rules
    from apps.quotas.ledger import get_ledger
    from apps.quotas.limits import check_limits
    from apps.quotas.models import IpRule, QuotaPolicy, UsageDaily
    from gateway_project import config_cache

    tag = uuid.uuid4().hex[:8]
    settings.GATEWAY_LIMIT_KEY_PREFIX = f"bench-{tag}"  # counters of this run only
    group = ensure_role_groups()[Role.CUSTOMER]
    channel = Channel.objects.create(slug=f"bench-limits-{tag}", name="bench limits", kind="api")
    users = [User.objects.create(username=f"bench-limits-{tag}-{i}") for i in range(concurrency)]
    for user in users:
        user.groups.add(group)
        QuotaPolicy.objects.create(scope="user", user=user, request_rate="100000000/m", tokens_per_day=10**12,
                                   tokens_per_month=10**13, cost_limit=Decimal("1000000"), cost_period="month")
    IpRule.objects.create(channel=channel, action="deny", cidr="192.0.2.0/24", source=f"bench-{tag}")
    config_cache.clear()
    model = SimpleNamespace(cost=lambda p, c: Decimal(p + 2 * c) / Decimal(1_000_000))
    per_thread = max(1, requests // concurrency)
    addresses = [f"198.51.100.{i % 250 + 1}" for i in range(concurrency)]
    prompt = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "How much is left today?"}]
    messages = [SimpleNamespace(sender=u, sender_id=u.pk, api_key_id=None, channel_id=channel.pk, channel=channel)
                for u in users]

    def limit_step(i: int, _n: int) -> None:
        check_ip_rules(addresses[i], channel=channel)
        check_limits(user=users[i], channel=channel, client_ip=addresses[i])

    def model_call_hooks(i: int, _n: int) -> None:
        reservation = budgets.reserve_model_call(messages[i], model, prompt, max_tokens=256)
        budgets.settle_model_call(reservation, SimpleNamespace(prompt_tokens=12, completion_tokens=30,
                                                               total_tokens=42))

    try:
        for i in range(concurrency):  # warm: each user's role, the policy snapshot, seeded counters
            limit_step(i, 0)
        results = {
            "mode": "services (PostgreSQL + Redis)" if settings.REDIS_URL else "embedded (SQLite, local memory)",
            "concurrency": concurrency,
            "harness": _timed(concurrency, per_thread, lambda i, n: None),
            "limit_step_alone": _timed(1, min(requests, 2000), limit_step),
            "limit_step": _timed(concurrency, per_thread, limit_step),
            "model_call_hooks_alone": _timed(1, min(requests // 10, 200), model_call_hooks),
            "model_call_hooks": _timed(concurrency, max(1, per_thread // 10), model_call_hooks),
        }
    finally:
        UsageDaily.objects.filter(user__in=users).delete()
        IpRule.objects.filter(source=f"bench-{tag}").delete()
        User.objects.filter(pk__in=[u.pk for u in users]).delete()
        channel.delete()
        get_ledger().clear(f"bench-{tag}:")
        config_cache.clear()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--requests", type=int, default=10_000)
    args = parser.parse_args()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "gateway_project.settings")
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    import django

    django.setup()
    results = measure(concurrency=args.concurrency, requests=args.requests)
    print(json.dumps(results))
    print(f"\n{results['mode']}, {results['concurrency']} concurrent threads in one process")
    for name in ("harness", "limit_step_alone", "limit_step", "model_call_hooks_alone", "model_call_hooks"):
        r = results[name]
        print(f"  {name:22} p50 {r['p50_ms']:8.3f} ms   p99 {r['p99_ms']:8.3f} ms   max {r['max_ms']:8.3f} ms"
              f"   {r['calls']} calls, {r['throughput_per_s']}/s {'ERRORS ' + str(r['errors']) if r['errors'] else ''}")


if __name__ == "__main__":
    main()

"""``make bench-ab``: each override of a library's internals against the library's own path, same run.

For every variant (all overrides on, all off, each one off alone; ``GATEWAY_PLAIN``,
gateway_project/plain.py) a fresh Daphne and Celery worker are started on the same PostgreSQL
database, Redis db and fake_llm (0 ms), warmed up, then driven at ``/v1/chat/completions``
(``BENCH_AB_DOOR=messages``: ``POST /api/v1/messages`` with ``wait``). Rounds are interleaved
(every variant once per round, the order rotated each round) so that machine drift hits all of
them alike; the median round is reported. CPU per answered message is the CPU time the Daphne and
worker processes, and the PostgreSQL backends of the bench's database, spent during the timed
requests, divided by the answers (Redis is shared with other users of the machine: not counted).

Knobs: BENCH_DATABASE_URL, BENCH_REDIS_URL (as bench/run.py: both wiped), BENCH_AB_ROUNDS (3),
BENCH_AB_REQUESTS (200 per round), BENCH_AB_WARMUP (30), BENCH_AB_CONCURRENCY (10),
BENCH_AB_VARIANTS (comma list of override names to turn off alone; default all),
BENCH_WORKER_POOL / BENCH_WORKER_CONCURRENCY (as bench/run.py). ``--render`` prints the last
run's table again (bench/results/overrides_ab.json).
"""
from __future__ import annotations

import json
import os
import statistics
import sys
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

BASE = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(BASE))

# The stack helpers (Stack, base_env, http), the bench's database and Redis and the load generator,
# through bench/run.py: the one place that says where they live.
from bench import run  # noqa: E402
from gateway_project.plain import OVERRIDES  # noqa: E402

ROUNDS = int(os.environ.get("BENCH_AB_ROUNDS", "3"))
REQUESTS = int(os.environ.get("BENCH_AB_REQUESTS", "200"))
WARMUP = int(os.environ.get("BENCH_AB_WARMUP", "30"))
CONCURRENCY = int(os.environ.get("BENCH_AB_CONCURRENCY", "10"))
DOOR = os.environ.get("BENCH_AB_DOOR", "face")
SINGLES = [n for n in os.environ.get("BENCH_AB_VARIANTS", ",".join(OVERRIDES)).split(",") if n]
TICK_MS = 1000 / os.sysconf("SC_CLK_TCK")
RESULTS = BASE / "bench" / "results"


def variants() -> dict[str, str]:
    """Variant name -> GATEWAY_PLAIN."""
    unknown = set(SINGLES) - OVERRIDES.keys()
    if unknown:
        raise SystemExit(f"BENCH_AB_VARIANTS: unknown override(s) {', '.join(sorted(unknown))}")
    return {"all on": "", "all off": ",".join(OVERRIDES), **{f"{name} off": name for name in SINGLES}}


def cpu_ticks(pid: int) -> int:
    """utime + stime of ``pid`` (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0
    return int(fields[11]) + int(fields[12])


class PostgresBackends:
    """CPU of the PostgreSQL backends serving the bench's database (the pools keep them for the round)."""

    def __init__(self):
        import psycopg

        self.dbname = urllib.parse.urlparse(run.DATABASE_URL).path[1:]
        self.conn = psycopg.connect(run.DATABASE_URL, autocommit=True)

    def ticks(self) -> dict[int, int]:
        pids = self.conn.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                                 (self.dbname,)).fetchall()
        return {pid: cpu_ticks(pid) for (pid,) in pids}


def target(urls: dict, demo: dict) -> dict:
    auth = {"Authorization": f"Bearer {demo['api_keys']['customer']}"}
    if DOOR == "messages":
        return {"url": f"{urls['gateway']}/api/v1/messages", "headers": auth,
                "body": {"message": "benchmark hello", "wait": 30}}
    return {"url": f"{urls['gateway']}/v1/chat/completions", "headers": auth,
            "body": {"model": "assistant", "messages": [{"role": "user", "content": "benchmark hello"}]}}


def one_round(stack: run.Stack, gateway_plain: str, demo: dict, backends: PostgresBackends) -> dict:
    """Start Daphne and a worker with ``gateway_plain``, warm up, time REQUESTS requests, stop them."""
    env = {"GATEWAY_PLAIN": gateway_plain}
    with ThreadPoolExecutor(2) as starting:  # both start at once: Django's import is most of the wait
        worker = starting.submit(stack.worker, concurrency=run.WORKER_CONCURRENCY, pool=run.WORKER_POOL, env=env)
        gateway = starting.submit(stack.daphne, env=env)
        worker, url = worker.result(), gateway.result()
    daphne = next(p for p in reversed(stack.processes) if p.name == "daphne")
    try:
        spec = {"kind": "http", "concurrency": CONCURRENCY, "timeout": 300, **target({"gateway": url}, demo)}
        status, body, _h = run.http("POST", spec["url"], spec["body"], spec["headers"])
        if status != 200:
            raise RuntimeError(f"GATEWAY_PLAIN={gateway_plain!r}: the gateway answered {status}: {body}")
        run.load({**spec, "count": WARMUP})
        pids = {"daphne": daphne.popen.pid, "worker": worker.popen.pid}
        before = {name: cpu_ticks(pid) for name, pid in pids.items()}
        pg_before = backends.ticks()
        result = run.load({**spec, "count": REQUESTS})
        pg_after = backends.ticks()
        after = {name: cpu_ticks(pid) for name, pid in pids.items()}
    finally:
        daphne.stop()
        worker.stop(timeout=60)
    answered = max(result["ok"], 1)
    cpu = {name: (after[name] - before[name]) * TICK_MS / answered for name in pids}
    cpu["postgres"] = sum(t - pg_before.get(pid, 0) for pid, t in pg_after.items()) * TICK_MS / answered
    return {"rps": result["rps"], "p50_ms": result["p50_ms"], "ok": result["ok"], "errors": result["errors"],
            "cpu_ms": {name: round(ms, 2) for name, ms in cpu.items()}, "cpu_ms_total": round(sum(cpu.values()), 2)}


def summarize(rounds: dict[str, list[dict]]) -> list[dict]:
    rows = []
    for name, results in rounds.items():
        cpu = [r["cpu_ms_total"] for r in results]
        rows.append({
            "variant": name, "rps": statistics.median(r["rps"] for r in results),
            "rps_rounds": [r["rps"] for r in results], "cpu_ms": statistics.median(cpu), "cpu_rounds": cpu,
            **{f"cpu_{part}": statistics.median(r["cpu_ms"][part] for r in results)
               for part in ("daphne", "worker", "postgres")},
            "errors": {k: sum(r["errors"].get(k, 0) for r in results) for r in results for k in r["errors"]},
        })
    base = rows[0]
    for row in rows:
        row["rps_delta"] = round(100 * (row["rps"] / base["rps"] - 1), 1)
        row["cpu_delta"] = round(100 * (row["cpu_ms"] / base["cpu_ms"] - 1), 1)
    return rows


def render(rows: list[dict], meta: dict) -> str:
    lines = [f"Overrides A/B ({meta['started']}, {meta['cpus']} CPUs, load average {meta['load_before']} before, "
             f"{meta['load_after']} after; {meta['rounds']} interleaved rounds of {meta['requests']} requests at "
             f"concurrency {meta['concurrency']} on {meta['door']}, model 0 ms, worker {meta['worker']}; "
             f"{meta['minutes']} min)", "",
             "| variant (GATEWAY_PLAIN) | req/s | Δ req/s | CPU ms/msg | Δ CPU | Daphne | worker | PostgreSQL "
             "| req/s rounds | CPU rounds | errors |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['variant']} | {r['rps']} | {r['rps_delta']:+}% | {r['cpu_ms']:.1f} | {r['cpu_delta']:+}% | "
            f"{r['cpu_daphne']:.1f} | {r['cpu_worker']:.1f} | {r['cpu_postgres']:.1f} | "
            f"{' / '.join(str(x) for x in r['rps_rounds'])} | {' / '.join(f'{x:.1f}' for x in r['cpu_rounds'])} | "
            f"{r['errors'] or ''} |")
    on = rows[0]
    lines += ["", "Δ: the variant's median against \"all on\"; a negative Δ req/s or a positive Δ CPU on "
              "\"<name> off\" is what that override saves. Noise: \"all on\" alone ranged "
              f"{min(on['rps_rounds'])}–{max(on['rps_rounds'])} req/s and "
              f"{min(on['cpu_rounds']):.1f}–{max(on['cpu_rounds']):.1f} CPU ms/msg over its rounds."]
    return "\n".join(lines) + "\n"


def main() -> None:
    if sys.argv[1:] == ["--render"]:  # the last run's table again
        saved = json.loads((RESULTS / "overrides_ab.json").read_text())
        print(render(saved["rows"], saved["meta"]))
        return
    started = time.monotonic()
    meta = {"started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpus": os.cpu_count(),
            "load_before": " ".join(f"{x:.1f}" for x in os.getloadavg()), "rounds": ROUNDS, "requests": REQUESTS,
            "concurrency": CONCURRENCY, "door": "/api/v1/messages (wait)" if DOOR == "messages"
            else "/v1/chat/completions", "worker": f"{run.WORKER_POOL} -c {run.WORKER_CONCURRENCY}"}
    plan = variants()
    run.log(f"load average {meta['load_before']}; preparing {run.DATABASE_URL} and {run.REDIS_URL}; "
        f"{len(plan)} variants x {ROUNDS} rounds")
    run.prepare_services()
    stack = run.Stack(run.base_env(DATABASE_URL=run.DATABASE_URL, REDIS_URL=run.REDIS_URL,
                                   GATEWAY_USER_RATE="100000000/m", LOG_LEVEL="WARNING"))
    rounds: dict[str, list[dict]] = {name: [] for name in plan}
    try:
        stack.env["OPENAI_BASE_URL"] = stack.fake_llm("--delay-ms", "0")
        stack.manage("migrate", "--noinput")
        demo = json.loads(stack.manage("seed_demo", "--json"))
        backends = PostgresBackends()
        names = list(plan)
        for number in range(ROUNDS):
            shift = number % len(names)
            for name in names[shift:] + names[:shift]:  # the order rotates each round
                result = one_round(stack, plan[name], demo, backends)
                rounds[name].append(result)
                run.log(f"round {number + 1} {name}: {result['rps']} req/s, {result['cpu_ms_total']} CPU ms/msg "
                    f"{result['cpu_ms']} errors {result['errors'] or 'none'}")
    except Exception:
        print(stack.logs())
        raise
    finally:
        stack.stop()
    meta["load_after"] = " ".join(f"{x:.1f}" for x in os.getloadavg())
    meta["minutes"] = round((time.monotonic() - started) / 60, 1)
    rows = summarize(rounds)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "overrides_ab.json").write_text(json.dumps({"meta": meta, "rows": rows, "rounds": rounds}, indent=2))
    print(render(rows, meta))


if __name__ == "__main__":
    main()

"""``make bench-ab``: each override of a library's internals against the library's own path, same run.

For every variant (all overrides on, all off, each one off alone; ``GATEWAY_PLAIN``,
gateway_project/plain.py) a fresh ASGI server and Celery worker are started on the same PostgreSQL
database, Redis db and fake_llm (0 ms), warmed up, then driven at ``/v1/chat/completions``
(``BENCH_AB_DOOR=messages``: ``POST /api/v1/messages`` with ``wait``; ``BENCH_AB_DOOR=slack``:
signed Slack events from 50 senders, one in ten resent as Slack retries, with no worker started, so
the figures are the front door's alone: webhook requests answered 200, resends included, and the
server, PostgreSQL and Redis CPU per such request). Rounds are interleaved
(every variant once per round, the order rotated each round) so that machine drift hits all of
them alike; the median round is reported. CPU per answered message is the CPU time the server and
worker processes, the PostgreSQL backends of the bench's database and every redis-server on the
machine (run it on a quiet one) spent during the timed requests, divided by the answers.

Knobs: BENCH_DATABASE_URL, BENCH_REDIS_URL (as bench/run.py: both wiped), BENCH_AB_ROUNDS (3),
BENCH_AB_REQUESTS (200 per round), BENCH_AB_WARMUP (30), BENCH_AB_CONCURRENCY (10),
BENCH_AB_VARIANTS (comma list of override names to turn off alone; default all; empty: none, and
no "all off"), BENCH_AB_SERVER (the ASGI server of those variants: "uvicorn", the image's, or
"daphne"), BENCH_AB_SERVERS ("daphne", "uvicorn", "uvicorn_httptools", "granian", "litellm": the same app, all
overrides on, on that ASGI server beside it; or the reference proxy),
BENCH_AB_LLM_DELAY_MS (the model's latency, 0), BENCH_WORKER_POOL / BENCH_WORKER_CONCURRENCY (as
bench/run.py). ``--render`` prints the last run's table again (bench/results/overrides_ab.json).
"""
from __future__ import annotations

import json
import os
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

BASE = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(BASE))

# The stack helpers (Stack, base_env, http), the bench's database and Redis and the load generator,
# through bench/run.py: the one place that says where they live.
from bench import run  # noqa: E402
from devtools.stack import UVICORN_OPTIONS  # noqa: E402
from gateway_project.plain import OVERRIDES  # noqa: E402

ROUNDS = int(os.environ.get("BENCH_AB_ROUNDS", "3"))
REQUESTS = int(os.environ.get("BENCH_AB_REQUESTS", "200"))
WARMUP = int(os.environ.get("BENCH_AB_WARMUP", "30"))
CONCURRENCY = int(os.environ.get("BENCH_AB_CONCURRENCY", "10"))
DOOR = os.environ.get("BENCH_AB_DOOR", "face")
SINGLES = [n for n in os.environ.get("BENCH_AB_VARIANTS", ",".join(OVERRIDES)).split(",") if n]
SERVER = os.environ.get("BENCH_AB_SERVER", "uvicorn")
# Other ASGI servers to run beside it, all overrides on (e.g. "daphne": devtools/stack.py).
SERVERS = [n for n in os.environ.get("BENCH_AB_SERVERS", "").split(",") if n]
LLM_DELAY_MS = os.environ.get("BENCH_AB_LLM_DELAY_MS", "0")
RESULTS = BASE / "bench" / "results"


def variants() -> dict[str, tuple[str, str]]:
    """Variant name -> (GATEWAY_PLAIN, ASGI server)."""
    unknown = set(SINGLES) - OVERRIDES.keys()
    if unknown:
        raise SystemExit(f"BENCH_AB_VARIANTS: unknown override(s) {', '.join(sorted(unknown))}")
    known = {"daphne", "uvicorn", "uvicorn_httptools", "granian"}
    if SERVER not in known or set(SERVERS) - known - {"litellm"}:
        raise SystemExit("BENCH_AB_SERVER(S): daphne, uvicorn, uvicorn_httptools, granian (and litellm beside) "
                         "are known")
    if DOOR == "slack" and "litellm" in SERVERS:
        raise SystemExit("BENCH_AB_DOOR=slack: LiteLLM has no Slack door to compare")
    plan = {"all on": ("", SERVER)}
    if SINGLES:
        plan["all off"] = (",".join(OVERRIDES), SERVER)
    plan.update({f"{name} off": (name, SERVER) for name in SINGLES})
    plan.update({f"all on, {server}": ("", server) for server in SERVERS if server not in ("litellm", SERVER)})
    if "litellm" in SERVERS:
        plan["LiteLLM proxy"] = ("", "litellm")
    return plan


def target(urls: dict, demo: dict) -> dict:
    auth = {"Authorization": f"Bearer {demo['api_keys']['customer']}"}
    if DOOR == "slack":
        slack = demo["channels"]["slack"]
        return {"url": f"{urls['gateway']}/api/v1/channels/{slack['slug']}/webhook", "ok_status": [200],
                "slack_signing_secret": slack["signing_secret"], "slack_users": 50, "repeat_every": 10}
    if DOOR == "messages":
        return {"url": f"{urls['gateway']}/api/v1/messages", "headers": auth,
                "body": {"message": "benchmark hello", "wait": 30}}
    return {"url": f"{urls['gateway']}/v1/chat/completions", "headers": auth,
            "body": {"model": "assistant", "messages": [{"role": "user", "content": "benchmark hello"}]}}


def start_server(stack: run.Stack, server: str, env: dict) -> str:
    """``daphne``, ``uvicorn`` (the image's options, h11) or ``uvicorn_httptools`` (httptools instead,
    whose unbounded request head is why the image does not use it)."""
    if server == "uvicorn_httptools":
        options = list(UVICORN_OPTIONS)
        options[options.index("--http") + 1] = "httptools"
        return stack.uvicorn(env=env, options=tuple(options))
    return getattr(stack, server)(env=env)


def one_round(stack: run.Stack, variant: tuple[str, str], demo: dict, backends: run.PostgresBackends) -> dict:
    """Start the server and a worker as ``variant`` says, warm up, time REQUESTS requests, stop them."""
    gateway_plain, server = variant
    env = {"GATEWAY_PLAIN": gateway_plain}
    with ThreadPoolExecutor(2) as starting:  # both start at once: Django's import is most of the wait
        worker = None if DOOR == "slack" else starting.submit(
            stack.worker, concurrency=run.WORKER_CONCURRENCY, pool=run.WORKER_POOL, env=env)
        gateway = starting.submit(start_server, stack, server, env)
        worker, url = worker and worker.result(), gateway.result()
    server_process = next(p for p in reversed(stack.processes) if p.name == server.split("_")[0])
    try:
        spec = {"kind": "http", "concurrency": CONCURRENCY, "timeout": 300, "request_timeout": 120,
                **target({"gateway": url}, demo)}
        if worker is not None:
            status, body, _h = run.http("POST", spec["url"], spec["body"], spec["headers"])
            if status != 200:
                raise RuntimeError(f"GATEWAY_PLAIN={gateway_plain!r}: the gateway answered {status}: {body}")
        pids = {"server": server_process.popen.pid, **({"worker": worker.popen.pid} if worker else {})}
        # granian serves from a worker process under its supervisor: count the whole tree.
        server_ticks = run.tree_ticks if server == "granian" else run.cpu_ticks

        def ticks(name: str, pid: int) -> int:
            return (server_ticks if name == "server" else run.cpu_ticks)(pid)

        # Slack: warm-up events numbered after the timed ones, so no dedupe key is reused.
        run.load({**spec, "count": WARMUP, "first_event": REQUESTS})
        before = {name: ticks(name, pid) for name, pid in pids.items()}
        pg_before, redis_before = backends.ticks(), run.redis_ticks()
        result = run.load({**spec, "count": REQUESTS})
        pg_after, redis_after = backends.ticks(), run.redis_ticks()
        after = {name: ticks(name, pid) for name, pid in pids.items()}
    finally:
        server_process.stop()
        if worker is not None:
            worker.stop(timeout=60)
    answered = max(result["ok"], 1)
    cpu = {"worker": 0.0, **{name: (after[name] - before[name]) * run.TICK_MS / answered for name in pids}}
    cpu["postgres"] = sum(t - pg_before.get(pid, 0) for pid, t in pg_after.items()) * run.TICK_MS / answered
    cpu["redis"] = (redis_after - redis_before) * run.TICK_MS / answered
    return measured(result, cpu)


def litellm_round(stack: run.Stack, url: str) -> dict:
    """The reference gateway on the same fake_llm, timed the same way (its whole process tree)."""
    spec = {"kind": "http", "concurrency": CONCURRENCY, "timeout": 300, "request_timeout": 120,
            "url": f"{url}/v1/chat/completions", "headers": {"Authorization": f"Bearer {run.MASTER_KEY}"},
            "body": {"model": "fake-gpt", "messages": [{"role": "user", "content": "benchmark hello"}]}}
    root = run.process_pid(stack, "litellm")
    run.load({**spec, "count": WARMUP})
    before = run.tree_ticks(root)
    result = run.load({**spec, "count": REQUESTS})
    answered = max(result["ok"], 1)
    return measured(result, {"server": (run.tree_ticks(root) - before) * run.TICK_MS / answered, "worker": 0.0,
                             "postgres": 0.0, "redis": 0.0})


def measured(result: dict, cpu: dict[str, float]) -> dict:
    return {"rps": result["rps"], "p50_ms": result["p50_ms"], "ok": result["ok"], "errors": result["errors"],
            "cpu_ms": {name: round(ms, 2) for name, ms in cpu.items()}, "cpu_ms_total": round(sum(cpu.values()), 2)}


def summarize(rounds: dict[str, list[dict]]) -> list[dict]:
    rows = []
    for name, results in rounds.items():
        cpu = [r["cpu_ms_total"] for r in results]
        rows.append({
            "variant": name, "rps": round(statistics.median(r["rps"] for r in results), 1),
            "rps_rounds": [r["rps"] for r in results], "cpu_ms": statistics.median(cpu), "cpu_rounds": cpu,
            **{f"cpu_{part}": statistics.median(r["cpu_ms"][part] for r in results)
               for part in ("server", "worker", "postgres", "redis")},
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
             f"concurrency {meta['concurrency']} on {meta['door']}, model {meta.get('llm_delay_ms', 0)} ms, "
             f"server {meta.get('server', 'daphne')}, worker {meta['worker']}; "
             f"{meta['minutes']} min)", "",
             "| variant (GATEWAY_PLAIN) | req/s | Δ req/s | CPU ms/msg | Δ CPU | server | worker | PostgreSQL "
             "| Redis | req/s rounds | CPU rounds | errors |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['variant']} | {r['rps']} | {r['rps_delta']:+}% | {r['cpu_ms']:.1f} | {r['cpu_delta']:+}% | "
            f"{r['cpu_server']:.1f} | {r['cpu_worker']:.1f} | {r['cpu_postgres']:.1f} | {r['cpu_redis']:.1f} | "
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
            "concurrency": CONCURRENCY, "llm_delay_ms": LLM_DELAY_MS,
            "door": {"messages": "/api/v1/messages (wait)", "slack": "the Slack webhook (no worker)"}.get(
                DOOR, "/v1/chat/completions"),
            "worker": f"{run.WORKER_POOL} -c {run.WORKER_CONCURRENCY}", "server": SERVER}
    plan = variants()
    run.log(f"load average {meta['load_before']}; preparing {run.DATABASE_URL} and {run.REDIS_URL}; "
        f"{len(plan)} variants x {ROUNDS} rounds")
    run.prepare_services()
    stack = run.Stack(run.base_env(DATABASE_URL=run.DATABASE_URL, REDIS_URL=run.REDIS_URL,
                                   GATEWAY_USER_RATE="100000000/m", LOG_LEVEL="WARNING"))
    rounds: dict[str, list[dict]] = {name: [] for name in plan}
    with run.shown_on_failure(stack):
        llm_url = stack.env["OPENAI_BASE_URL"] = stack.fake_llm("--delay-ms", LLM_DELAY_MS)
        litellm = run.start_litellm(stack, llm_url) if "litellm" in SERVERS else None
        stack.manage("migrate", "--noinput")
        demo = json.loads(stack.manage("seed_demo", "--json"))
        backends = run.PostgresBackends()
        names = list(plan)
        for number in range(ROUNDS):
            shift = number % len(names)
            for name in names[shift:] + names[:shift]:  # the order rotates each round
                if plan[name][1] == "litellm":
                    result = litellm_round(stack, litellm)
                else:
                    result = one_round(stack, plan[name], demo, backends)
                rounds[name].append(result)
                run.log(f"round {number + 1} {name}: {result['rps']} req/s, {result['cpu_ms_total']} CPU ms/msg "
                    f"{result['cpu_ms']} errors {result['errors'] or 'none'}")
    run.finish_meta(meta, started)
    rows = summarize(rounds)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "overrides_ab.json").write_text(json.dumps({"meta": meta, "rows": rows, "rounds": rounds}, indent=2))
    print(render(rows, meta))


if __name__ == "__main__":
    main()

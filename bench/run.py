"""``make bench``: start the stack in services mode, drive it from a separate process, write results.

Stack: PostgreSQL (its own database, BENCH_DATABASE_URL), Redis (its own db, BENCH_REDIS_URL),
the ASGI server (BENCH_SERVER), a Celery worker (gevent pool), fake_llm (BENCH_LLM_DELAY_MS), and
LiteLLM's proxy (its own virtualenv, bench/.venv-litellm, created on first run) on the same fake_llm. Load comes from
bench/load.py in another process, on loopback. Results: bench/results/latest.json and latest.md.

Scenarios are interleaved (direct, gateway, LiteLLM, … per round) so ratios hold on a noisy machine.
Environment knobs: BENCH_REQUESTS (per cell at concurrency 1; x2 at 10 and 50), BENCH_ROUNDS,
BENCH_WS_CONNECTIONS, BENCH_INGEST, BENCH_INGEST_WARMUP, BENCH_SCENARIOS (comma list of overhead, ingest, webchat,
limits, realistic, in_flight, scale_out, soak; realistic runs in_flight too), BENCH_PROFILE=1 (py-spy on the server
and the worker), BENCH_SKIP_LITELLM=1, BENCH_SERVER (uvicorn, the image's; or daphne), BENCH_REALISTIC_CONCURRENCY,
BENCH_REALISTIC_REQUESTS_PER_SLOT, BENCH_IN_FLIGHT_RUNS, BENCH_IN_FLIGHT_DELAY_S,
BENCH_IN_FLIGHT_ACCEPT_CONCURRENCY, BENCH_SCALE_OUT_CONCURRENCY, BENCH_SCALE_OUT_REQUESTS, BENCH_SOAK_BLOCKS,
BENCH_SOAK_REQUESTS.
"""
from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time
import urllib.parse
from contextlib import contextmanager
from pathlib import Path

BASE = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(BASE))

from devtools.stack import PYTHON, Stack, base_env, free_port, http, visitor_token  # noqa: E402

RESULTS = BASE / "bench" / "results"
LITELLM_VENV = BASE / "bench" / ".venv-litellm"
# The peer's pinned requirements live in shared/, beside the checkout.
LITELLM_REQS = Path(os.environ.get("BENCH_LITELLM_REQS", BASE.parent / "shared" / "peers" / "litellm-proxy-reqs.txt"))
DATABASE_URL = os.environ.get("BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/gateway_bench")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/12")
LLM_DELAY_MS = os.environ.get("BENCH_LLM_DELAY_MS", "0")
REQUESTS = int(os.environ.get("BENCH_REQUESTS", "100"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "2"))
WS_CONNECTIONS = int(os.environ.get("BENCH_WS_CONNECTIONS", "5000"))
INGEST = int(os.environ.get("BENCH_INGEST", "1000"))
INGEST_WARMUP = int(os.environ.get("BENCH_INGEST_WARMUP", "200"))
# realistic runs in_flight too
ALL_SCENARIOS = ("overhead", "ingest", "webchat", "limits", "realistic", "scale_out", "soak")
SCENARIOS = set(os.environ.get("BENCH_SCENARIOS", ",".join(ALL_SCENARIOS)).split(","))
RESULT_KEYS = ("overhead", "profile", "ingest", "webchat", "limit_step", "realistic", "in_flight", "in_flight_queued",
               "scale_out", "soak", "process_log_errors")
WORKER_POOL = os.environ.get("BENCH_WORKER_POOL", "gevent")
SERVER = os.environ.get("BENCH_SERVER", "uvicorn")  # the image's server; or daphne (docs/decisions/asgi-server.md)
WORKER_CONCURRENCY = int(os.environ.get("BENCH_WORKER_CONCURRENCY", "1000" if WORKER_POOL == "gevent" else "64"))
# The realistic-latency scenario: requests per cell = concurrency x this; the in-flight figure's runs.
REALISTIC_REQUESTS_PER_SLOT = int(os.environ.get("BENCH_REALISTIC_REQUESTS_PER_SLOT", "2"))
REALISTIC_CONCURRENCY = [int(c) for c in os.environ.get("BENCH_REALISTIC_CONCURRENCY", "200,1000").split(",")]
IN_FLIGHT_RUNS = int(os.environ.get("BENCH_IN_FLIGHT_RUNS", "1000"))
IN_FLIGHT_DELAY_S = int(os.environ.get("BENCH_IN_FLIGHT_DELAY_S", "5"))
IN_FLIGHT_ACCEPT_CONCURRENCY = int(os.environ.get("BENCH_IN_FLIGHT_ACCEPT_CONCURRENCY", "200"))
SCALE_OUT_CONCURRENCY = int(os.environ.get("BENCH_SCALE_OUT_CONCURRENCY", "200"))
SCALE_OUT_REQUESTS = int(os.environ.get("BENCH_SCALE_OUT_REQUESTS", "600"))
# The soak: blocks of face requests (model 0 ms), memory read after each.
SOAK_BLOCKS = int(os.environ.get("BENCH_SOAK_BLOCKS", "4"))
SOAK_REQUESTS = int(os.environ.get("BENCH_SOAK_REQUESTS", "5000"))
SOAK_CONCURRENCY = 50
MASTER_KEY = "sk-bench-master"
CHAT_BODY = {"model": "fake-gpt", "messages": [{"role": "user", "content": "benchmark hello"}]}


def log(text: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {text}", flush=True)


@contextmanager
def shown_on_failure(stack: Stack):
    """Stop ``stack`` when the block ends; if it failed, print the stack's logs first."""
    try:
        yield
    except Exception:
        print(stack.logs())
        raise
    finally:
        stack.stop()


def finish_meta(meta: dict, started: float) -> None:
    """The machine's load after a run and how long it took (``started``: time.monotonic())."""
    meta["load_after"] = " ".join(f"{x:.1f}" for x in os.getloadavg())
    meta["minutes"] = round((time.monotonic() - started) / 60, 1)


def load(spec: dict, stdin: str | None = None) -> dict:
    """Run one scenario in the separate load-generating process (``stdin``: what it reads, such as
    the "go" a ws_hold scenario waits for)."""
    done = subprocess.run([PYTHON, str(BASE / "bench" / "load.py"), json.dumps(spec)], capture_output=True,
                          text=True, timeout=spec.get("timeout", 120) + 60, input=stdin)
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"load generator failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    return lines[-1]


def prepare_services() -> None:
    import psycopg
    import redis

    parsed = urllib.parse.urlparse(DATABASE_URL)
    admin_url = parsed._replace(path="/postgres").geturl()
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{parsed.path[1:]}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{parsed.path[1:]}"')
    redis.Redis.from_url(REDIS_URL).flushdb()  # the bench's own Redis db only


def start_litellm(stack: Stack, llm_url: str) -> str | None:
    if os.environ.get("BENCH_SKIP_LITELLM") == "1":
        return None
    if not (LITELLM_VENV / "bin" / "litellm").exists():
        log(f"creating {LITELLM_VENV} (first run)")
        subprocess.run([sys.executable, "-m", "venv", str(LITELLM_VENV)], check=True)
        subprocess.run([str(LITELLM_VENV / "bin" / "pip"), "install", "-q", "-r", str(LITELLM_REQS)], check=True)
    config = stack.log_dir / "litellm.yaml"
    config.write_text(json.dumps({  # JSON is YAML
        "model_list": [{"model_name": "fake-gpt",
                        "litellm_params": {"model": "openai/fake-gpt", "api_base": llm_url, "api_key": "x"}}],
        "general_settings": {"master_key": MASTER_KEY},
    }))
    port = free_port()
    env = {"LITELLM_OFFLINE_MODE": "true", "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_TELEMETRY": "False",
           "LITELLM_LOG": "ERROR", "DISABLE_ADMIN_UI": "True", "DATABASE_URL": None, "REDIS_URL": None,
           "DJANGO_SETTINGS_MODULE": None}
    process = stack.spawn("litellm", [str(LITELLM_VENV / "bin" / "litellm"), "--config", str(config), "--host",
                                      "127.0.0.1", "--port", str(port), "--num_workers", "1"], env=env)
    url = f"http://127.0.0.1:{port}"
    process.wait_for_http(f"{url}/health/liveliness", timeout=120)
    return url


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def process_pid(stack: Stack, name: str) -> int:
    return next(p.popen.pid for p in reversed(stack.processes) if p.name == name and p.popen.poll() is None)


def overhead(stack, urls: dict, demo: dict) -> list[dict]:
    """Latency through each front door vs the model directly, interleaved per round."""
    auth = {"Authorization": f"Bearer {demo['api_keys']['customer']}"}
    targets = {
        "direct fake_llm": {"url": f"{urls['llm']}/chat/completions", "body": CHAT_BODY},
        "gateway /api/v1/messages (wait)": {"url": f"{urls['gateway']}/api/v1/messages", "headers": auth,
                                            "body": {"message": "benchmark hello", "wait": 30}},
    }
    # On the gateway's OpenAI face, ``model`` names an agent: the demo's "assistant" (on fake-gpt).
    face_body = {**CHAT_BODY, "model": "assistant"}
    status, body, _h = http("POST", f"{urls['gateway']}/v1/chat/completions", face_body, auth)
    if status != 200:
        raise RuntimeError(f"the gateway's OpenAI face answered {status}: {body}")
    targets["gateway /v1/chat/completions"] = {"url": f"{urls['gateway']}/v1/chat/completions",
                                               "headers": auth, "body": face_body}
    if urls.get("litellm"):
        targets["LiteLLM proxy /v1/chat/completions"] = {
            "url": f"{urls['litellm']}/v1/chat/completions", "body": CHAT_BODY,
            "headers": {"Authorization": f"Bearer {MASTER_KEY}"}}
    rows = []
    for concurrency in (1, 10, 50):
        count = REQUESTS if concurrency == 1 else REQUESTS * 2
        merged: dict[str, list[dict]] = {name: [] for name in targets}
        for _round in range(ROUNDS):
            for name, target in targets.items():
                result = load({"kind": "http", "concurrency": concurrency, "count": count, "timeout": 300,
                               "warmup": 3, **target})
                merged[name].append(result)
                log(f"c={concurrency} {name}: {result['rps']} rps p50 {result['p50_ms']} ms errors {result['errors']}")
        for name, results in merged.items():
            rows.append({"scenario": name, "concurrency": concurrency, **best_of(results)})
    direct = {r["concurrency"]: r for r in rows if r["scenario"] == "direct fake_llm"}
    for row in rows:
        base = direct[row["concurrency"]]
        row["overhead_p50_ms"] = round(row["p50_ms"] - base["p50_ms"], 2) if row["p50_ms"] is not None else None
    return rows


def best_of(results: list[dict]) -> dict:
    """The median round by p50 (rounds are interleaved, so each front door saw similar noise)."""
    ordered = sorted(results, key=lambda r: r["p50_ms"] or 1e9)
    chosen = dict(ordered[len(ordered) // 2])
    chosen["rounds"] = len(results)
    chosen["errors"] = {k: sum(r["errors"].get(k, 0) for r in results) for r in results for k in r["errors"]}
    return chosen


def ingest(stack, urls: dict, demo: dict) -> list[dict]:
    """Messages accepted per second (persisted + enqueued) vs a bare DRF endpoint; lost/duplicates counted.

    Each front door runs twice: with the worker stopped (the entry point alone on the machine, as
    the bare endpoint is measured; the worker then starts and drains the queue) and with the worker
    answering at the same time (both on the same 2 cores). Every accepted message must be stored
    once and answered once the queue drains.
    """
    auth = {"Authorization": f"Bearer {demo['api_keys']['employee']}"}
    bare = load({"kind": "http", "url": f"{urls['gateway']}/bench/bare", "body": {"message": "x"}, "concurrency": 50,
                 "count": INGEST, "ok_status": [202], "timeout": 300, "warmup": INGEST_WARMUP})
    rows = [{"scenario": "bare DRF endpoint (ceiling)", "concurrency": 50, **bare}]
    doors = {
        "API messages accepted (202, 10% retried)": {
            "url": f"{urls['gateway']}/api/v1/messages", "headers": auth, "body": {"message": "ingest"},
            "ok_status": [202], "idempotency": True, "collect_ids": True},
        "signed Slack events accepted (200, 10% Slack retries)": {
            "url": f"{urls['gateway']}/api/v1/channels/{demo['channels']['slack']['slug']}/webhook",
            "slack_signing_secret": demo["channels"]["slack"]["signing_secret"], "slack_users": 50,
            "ok_status": [200]},
    }
    for worker_running in (False, True):
        if not worker_running:
            next(p for p in stack.processes if p.name == "celery" and p.popen.poll() is None).stop(timeout=60)
        for name, door in doors.items():
            result = load({"kind": "http", "concurrency": 50, "count": INGEST, "repeat_every": 10, "timeout": 300,
                           "warmup": INGEST_WARMUP, **door})
            label = f"{name}, worker {'answering meanwhile' if worker_running else 'stopped'}"
            log(f"ingest {label}: {result['rps']}/s errors {result['errors']}")
            rows.append({"scenario": label, "concurrency": 50, **result,
                         "ratio_to_ceiling": round(result["rps"] / bare["rps"], 2) if bare["rps"] else None})
        if not worker_running:
            stack.worker(concurrency=WORKER_CONCURRENCY, pool=WORKER_POOL)
        pending = drain()
        for row in rows[-2:]:
            row.update(count_stored(row.pop("keys"), row.pop("accepted_ids", [])), unanswered_after_drain=pending)
    return rows


def count_stored(keys: list[str], accepted_ids: list[str]) -> dict:
    """Lost: an accepted message (or a sent key) not in the database. Duplicates: a key stored twice.
    Answered: the distinct keys whose inbound message is answered."""
    import psycopg

    with psycopg.connect(DATABASE_URL) as conn:
        rows = conn.execute(
            "SELECT external_id, count(*), count(*) FILTER (WHERE status = 'answered') FROM conversations_message "
            "WHERE direction = 'in' AND (external_id = ANY(%s) OR split_part(external_id, ':', 2) = ANY(%s)) "
            "GROUP BY 1", (keys, keys)).fetchall()
        present = conn.execute("SELECT count(*) FROM conversations_message WHERE id::text = ANY(%s)",
                               (sorted(set(accepted_ids)),)).fetchone()[0]
    stored = {external: (n, answered) for external, n, answered in rows}
    stored_keys = {external if external in keys else external.split(":", 1)[1] for external in stored}
    return {"distinct_keys": len(set(keys)), "lost": len(set(accepted_ids)) - present + len(set(keys) - stored_keys),
            "duplicates": sum(n - 1 for n, _a in stored.values() if n > 1),
            "answered": sum(1 for _n, answered in stored.values() if answered)}


def drain(timeout: float = 300) -> int:
    """Wait until no inbound message is accepted or processing; returns how many still are."""
    import psycopg

    deadline = time.monotonic() + timeout
    with psycopg.connect(DATABASE_URL, autocommit=True) as conn:
        while True:
            pending = conn.execute("SELECT count(*) FROM conversations_message WHERE direction='in' "
                                   "AND status IN ('accepted','processing')").fetchone()[0]
            if not pending or time.monotonic() > deadline:
                return pending
            time.sleep(1)


def webchat(stack, urls: dict, demo: dict) -> dict:
    slug = demo["channels"]["webchat"]["slug"]
    token = visitor_token(urls["gateway"], slug)
    ws_url = urls["gateway"].replace("http", "ws") + f"/ws/chat/{slug}/?visitor={token}"
    pid = process_pid(stack, SERVER)
    before = rss_kib(pid)
    spec = {"kind": "ws_hold", "url": ws_url, "connections": WS_CONNECTIONS, "keep_for_chat": 1000,
            "message_sockets": 100, "messages": 500, "timeout": 600, "connect_concurrency": 50}
    proc = subprocess.Popen([PYTHON, str(BASE / "bench" / "load.py"), json.dumps(spec)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    held_line = json.loads(proc.stdout.readline())
    time.sleep(2)
    during = rss_kib(pid)
    proc.stdin.write("go\n")
    proc.stdin.flush()
    out, _ = proc.communicate(timeout=900)
    result = json.loads([line for line in out.splitlines() if line.startswith("{")][-1])
    held = held_line["held"]
    return {**result, "daphne_rss_before_mib": round(before / 1024, 1), "daphne_rss_held_mib": round(during / 1024, 1),
            "kib_per_connection": round((during - before) / held, 1) if held else None}


def realistic(stack, urls: dict, demo: dict) -> list[dict]:
    """Model latency 1 s (fake_llm's ``[[delay:1]]``), at concurrency 200 and 1,000: the model
    directly, the gateway's face (streamed and not), the messages API with ``wait``, the web chat,
    and LiteLLM (streamed and not), one cell after the other at each concurrency."""
    text = "benchmark hello [[delay:1]]"
    auth = {"Authorization": f"Bearer {demo['api_keys']['customer']}"}
    body = {"model": "fake-gpt", "messages": [{"role": "user", "content": text}]}
    face = {**body, "model": "assistant"}
    targets = {
        "direct fake_llm": {"url": f"{urls['llm']}/chat/completions", "body": body},
        "direct fake_llm (stream)": {"url": f"{urls['llm']}/chat/completions", "body": {**body, "stream": True}},
        "gateway /v1/chat/completions": {"url": f"{urls['gateway']}/v1/chat/completions", "headers": auth,
                                         "body": face},
        "gateway /v1/chat/completions (stream)": {"url": f"{urls['gateway']}/v1/chat/completions",
                                                  "headers": auth, "body": {**face, "stream": True}},
        "gateway /api/v1/messages (wait)": {"url": f"{urls['gateway']}/api/v1/messages", "headers": auth,
                                            "body": {"message": text, "wait": 60}},
    }
    if urls.get("litellm"):
        litellm_auth = {"Authorization": f"Bearer {MASTER_KEY}"}
        targets["LiteLLM proxy"] = {"url": f"{urls['litellm']}/v1/chat/completions", "body": body,
                                    "headers": litellm_auth}
        targets["LiteLLM proxy (stream)"] = {"url": f"{urls['litellm']}/v1/chat/completions",
                                             "body": {**body, "stream": True}, "headers": litellm_auth}
    slug = demo["channels"]["webchat"]["slug"]
    ws_url = urls["gateway"].replace("http", "ws") + f"/ws/chat/{slug}/?visitor={visitor_token(urls['gateway'], slug)}"
    rows = []
    meter = CpuMeter(stack)
    for concurrency in REALISTIC_CONCURRENCY:
        count = concurrency * REALISTIC_REQUESTS_PER_SLOT
        for name, target in targets.items():
            before = meter.read()
            result = load({"kind": "http", "concurrency": concurrency, "count": count, "timeout": 300,
                           "warmup": 0, "request_timeout": 120, **target})
            result["cpu"] = meter.per_answer(before, meter.read(), result["ok"])
            rows.append({"scenario": name, "concurrency": concurrency, **result})
            log(f"realistic c={concurrency} {name}: {result['rps']} rps p50 {result['p50_ms']} ms "
                f"errors {result['errors']}")
        spec = {"kind": "ws_hold", "url": ws_url, "connections": concurrency, "keep_for_chat": concurrency,
                "message_sockets": concurrency, "messages": count, "timeout": 300, "connect_concurrency": 50,
                "text": text, "reply_timeout": 120}
        done = subprocess.run([PYTHON, str(BASE / "bench" / "load.py"), json.dumps(spec)], input="go\n",
                              capture_output=True, text=True, timeout=600)
        result = json.loads([line for line in done.stdout.splitlines() if '"result"' in line][-1])
        result["errors"] = {**result["errors"], **{f"connect {k}": v for k, v in result["connect_errors"].items()}}
        rows.append({"scenario": "gateway web chat (streamed)", "concurrency": concurrency, **result})
        log(f"realistic c={concurrency} web chat: {result['rps']} rps p50 {result['p50_ms']} ms "
            f"errors {result['errors']}")
    direct = {r["concurrency"]: r for r in rows if r["scenario"] == "direct fake_llm"}
    for row in rows:
        base = direct[row["concurrency"]]
        row["overhead_p50_ms"] = round(row["p50_ms"] - base["p50_ms"], 1) if row["p50_ms"] is not None else None
        row["share_of_direct"] = round(row["rps"] / base["rps"], 2) if row.get("rps") and base.get("rps") else None
        for key in ("keys", "accepted_ids"):
            row.pop(key, None)
    return rows


class CpuMeter:
    """CPU per answer of a cell, by process: the gateway's server and worker, PostgreSQL's backends of
    the bench database, every redis-server, fake_llm, LiteLLM's process tree and the load generator
    (this process's children: each cell's load.py, its start included); and how busy the machine was
    (all its CPUs, from /proc/stat)."""

    def __init__(self, stack):
        self.stack, self.backends = stack, PostgresBackends()

    def read(self) -> dict:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        ticks = {name: cpu_ticks(process_pid(self.stack, name)) for name in (SERVER, "celery", "fake_llm")}
        litellm = [p.popen.pid for p in self.stack.processes if p.name == "litellm" and p.popen.poll() is None]
        return {"ticks": {**ticks, "redis": redis_ticks(), "litellm": tree_ticks(litellm[0]) if litellm else 0},
                "postgres": self.backends.ticks(), "load_s": children.ru_utime + children.ru_stime,
                "busy": sum(fields) - fields[3] - fields[4], "all": sum(fields)}

    @staticmethod
    def per_answer(before: dict, after: dict, answered: int) -> dict:
        n = max(answered, 1)
        cpu = {name: (after["ticks"][name] - before["ticks"][name]) * TICK_MS / n for name in after["ticks"]}
        cpu["postgres"] = sum(t - before["postgres"].get(pid, 0) for pid, t in after["postgres"].items()) * TICK_MS / n
        cpu["load"] = (after["load_s"] - before["load_s"]) * 1000 / n
        cpu = {("server" if name == SERVER else "worker" if name == "celery" else name): round(ms, 2)
               for name, ms in cpu.items()}
        cpu["machine_busy"] = round((after["busy"] - before["busy"]) / max(after["all"] - before["all"], 1), 3)
        return cpu


def in_flight(stack, urls: dict, demo: dict, *, queued: bool = False) -> dict:
    """One worker, model latency IN_FLIGHT_DELAY_S: accept IN_FLIGHT_RUNS messages (no wait), then
    sample how many runs are in flight at once, the worker's RSS and the database connections.

    Paced (the default), runs start as fast as messages are accepted, so the peak is about the accept
    rate times the model's latency. ``queued``: the worker is paused (SIGSTOP) while every message is
    accepted and queued, then let go, so it takes up the whole backlog at once: what one process can
    hold, whatever the front door's rate."""
    import psycopg

    auth = {"Authorization": f"Bearer {demo['api_keys']['customer']}"}
    worker = process_pid(stack, "celery")
    rss_before = rss_kib(worker)
    spec = {"kind": "http", "concurrency": IN_FLIGHT_ACCEPT_CONCURRENCY, "count": IN_FLIGHT_RUNS, "timeout": 300,
            "ok_status": [202], "url": f"{urls['gateway']}/api/v1/messages", "headers": auth,
            "body": {"message": f"in flight [[delay:{IN_FLIGHT_DELAY_S}]]"}}
    proc = None
    with psycopg.connect(DATABASE_URL, autocommit=True) as conn:
        since = conn.execute("SELECT now()").fetchone()[0]
    if queued:
        os.kill(worker, signal.SIGSTOP)
        try:
            accepted = load(spec)
        finally:
            os.kill(worker, signal.SIGCONT)
    else:
        proc = subprocess.Popen([PYTHON, str(BASE / "bench" / "load.py"), json.dumps(spec)],
                                stdout=subprocess.PIPE, text=True)
    peak = {"processing": 0, "rss_kib": rss_before, "db_connections": 0, "db_active": 0}
    dbname = urllib.parse.urlparse(DATABASE_URL).path[1:]
    deadline = time.monotonic() + 120
    with psycopg.connect(DATABASE_URL, autocommit=True) as conn:
        while time.monotonic() < deadline:
            processing = conn.execute("SELECT count(*) FROM conversations_message WHERE direction='in' "
                                      "AND status='processing'").fetchone()[0]
            total, active = conn.execute(
                "SELECT count(*), count(*) FILTER (WHERE state <> 'idle') FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()", (dbname,)).fetchone()
            peak = {"processing": max(peak["processing"], processing), "rss_kib": max(peak["rss_kib"], rss_kib(worker)),
                    "db_connections": max(peak["db_connections"], total), "db_active": max(peak["db_active"], active)}
            if (proc is None or proc.poll() is not None) and processing == 0:
                pending = conn.execute("SELECT count(*) FROM conversations_message WHERE direction='in' "
                                       "AND status='accepted'").fetchone()[0]
                if not pending:
                    break
            time.sleep(0.5)
    if proc is not None:
        out, _ = proc.communicate(timeout=60)
        accepted = json.loads([line for line in out.splitlines() if line.startswith("{")][-1])
    left = drain(120)
    return {"mode": "queued" if queued else "paced", "model_latency_s": IN_FLIGHT_DELAY_S,
            "accept_rps": accepted.get("rps"), "runs": IN_FLIGHT_RUNS, "accepted": accepted["ok"],
            "accept_errors": accepted["errors"],
            "peak_in_flight": peak["processing"], "worker_rss_before_mib": round(rss_before / 1024, 1),
            "worker_rss_peak_mib": round(peak["rss_kib"] / 1024, 1),
            "db_connections_peak_all_processes": peak["db_connections"],
            "db_connections_active_peak": peak["db_active"],
            "worker_pool": f"{WORKER_POOL} -c {WORKER_CONCURRENCY}", "left_unanswered": left,
            **model_calls_since(since)}


def model_calls_since(since) -> dict:
    """The model's side of the runs, from their LLM-call rows (each call started ``latency_ms``
    before its row was written): how many calls were at the model at once, at most; how long a call
    took in the worker, against the model's own latency; and over how many seconds the runs started.
    A ``processing`` count alone also counts runs slowed inside the worker."""
    import psycopg

    with psycopg.connect(DATABASE_URL, autocommit=True) as conn:
        rows = conn.execute("SELECT extract(epoch FROM created_at)::float8, latency_ms FROM logs_llmcall "
                            "WHERE created_at >= %s AND status = 'ok'", (since,)).fetchall()
    if not rows:
        return {}
    calls = sorted((end - latency / 1000, end) for end, latency in rows)
    edges = sorted([(start, 1) for start, _ in calls] + [(end, -1) for _, end in calls])
    at_once = peak = 0
    for _, step in edges:
        at_once += step
        peak = max(peak, at_once)
    latencies = sorted(latency for _, latency in rows)
    return {"model_calls_peak_at_once": peak, "model_call_p50_ms": latencies[len(latencies) // 2],
            "model_call_max_ms": latencies[-1], "runs_started_over_s": round(calls[-1][0] - calls[0][0], 2)}


TICK_MS = 1000 / os.sysconf("SC_CLK_TCK")


def cpu_ticks(pid: int) -> int:
    """utime + stime of ``pid`` (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0
    return int(fields[11]) + int(fields[12])


def tree_ticks(root: int) -> int:
    """utime + stime of ``root`` and of its live descendants (LiteLLM's proxy may fork)."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        total += cpu_ticks(pid)
        todo += parents.get(pid, [])
    return total


def redis_ticks() -> int:
    """CPU of every redis-server on the machine (the bench's db shares the server: others inflate it)."""
    total = 0
    for comm in Path("/proc").glob("[0-9]*/comm"):
        try:
            if comm.read_text().strip() == "redis-server":
                total += cpu_ticks(int(comm.parent.name))
        except OSError:
            continue
    return total


class PostgresBackends:
    """CPU of the PostgreSQL backends serving the bench's database (the pools keep them for the round)."""

    def __init__(self):
        import psycopg

        self.dbname = urllib.parse.urlparse(DATABASE_URL).path[1:]
        self.conn = psycopg.connect(DATABASE_URL, autocommit=True)

    def ticks(self) -> dict[int, int]:
        pids = self.conn.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                                 (self.dbname,)).fetchall()
        return {pid: cpu_ticks(pid) for (pid,) in pids}


def log_errors(stack) -> dict[str, int]:
    """ERROR and CRITICAL records each gateway process logged during the run (a run that answered
    everything can still have dropped a broker connection and stranded a message)."""
    counts = {}
    for process in stack.processes:
        if process.name in (SERVER, "celery"):
            found = sum(1 for line in process.log().splitlines()
                        if '"level": "ERROR"' in line or '"level": "CRITICAL"' in line  # the JSON log
                        or line.startswith(("ERROR:", "CRITICAL:"))  # uvicorn's own handler
                        or line.startswith("Traceback (most recent call last)"))  # printed raw
            counts[f"{process.name} {process.popen.pid}"] = found
    return counts


def scale_out(stack, urls: dict, demo: dict) -> list[dict]:
    """The face with a 1 s model on one server and one worker, then on two of each (the load
    generator takes the servers in turn), on the same PostgreSQL and Redis: what a second pair of
    processes adds. A pair needs cores of its own to add anything; the machine's count is reported."""
    spec = {"kind": "http", "concurrency": SCALE_OUT_CONCURRENCY, "count": SCALE_OUT_REQUESTS, "timeout": 300,
            "warmup": SCALE_OUT_CONCURRENCY, "request_timeout": 120,
            "headers": {"Authorization": f"Bearer {demo['api_keys']['customer']}"},
            "body": {"model": "assistant", "messages": [{"role": "user", "content": "benchmark hello [[delay:1]]"}]}}
    first = [p for p in stack.processes if p.name in (SERVER, "celery") and p.popen.poll() is None]
    rows = []

    def measure(label: str, gateways: list[str], processes) -> None:
        pids = [p.popen.pid for p in processes]
        run_spec = {**spec, "urls": [f"{url}/v1/chat/completions" for url in gateways]}
        load({**run_spec, "count": spec["warmup"], "warmup": 0})
        before = sum(cpu_ticks(pid) for pid in pids)
        result = load({**run_spec, "warmup": 0})
        used = (sum(cpu_ticks(pid) for pid in pids) - before) * TICK_MS
        row = {"scenario": label, "concurrency": SCALE_OUT_CONCURRENCY, "cpus": os.cpu_count(), **result,
               "cpu_ms_per_answer_gateway_processes": round(used / max(result["ok"], 1), 1)}
        rows.append(row)
        log(f"scale-out {label}: {row['rps']} rps p50 {row['p50_ms']} ms, "
            f"{row['cpu_ms_per_answer_gateway_processes']} CPU ms/answer, errors {row['errors']}")

    measure("1 server + 1 worker", [urls["gateway"]], first)
    worker = stack.worker(concurrency=WORKER_CONCURRENCY, pool=WORKER_POOL)
    server = None
    try:
        # Which process a second one relieves: the worker alone first, then the server too.
        measure("1 server + 2 workers", [urls["gateway"]], [*first, worker])
        second = getattr(stack, SERVER)()
        server = next(p for p in reversed(stack.processes) if p.name == SERVER)
        measure("2 servers + 2 workers", [urls["gateway"], second], [*first, worker, server])
    finally:
        if server is not None:
            server.stop()
        worker.stop(timeout=60)
    for row in rows[1:]:
        row["ratio_to_one_pair"] = round(row["rps"] / rows[0]["rps"], 2) if rows[0]["rps"] else None
    for row in rows:
        row.pop("keys", None)
    return rows


def soak(urls: dict, demo: dict, *, server: int, worker: int) -> dict:
    """Memory over a long run: SOAK_BLOCKS blocks of SOAK_REQUESTS requests on the face (model 0 ms,
    concurrency SOAK_CONCURRENCY, half of them streamed), then four rounds of web chat sockets
    opened, used once and closed; after each, the server's and the worker's RSS, Redis' memory, the request-log rows
    buffered in Redis (the beat task drains them every GATEWAY_LOG_FLUSH_SECONDS) and how many
    channel-layer channels Redis holds subscribed. What each request leaves behind shows as growth
    that does not level off; the first block is the warm-up, the growth is counted after it."""
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    prefix = os.environ.get("GATEWAY_CHANNEL_LAYER_PREFIX", "asgi")  # settings.CHANNEL_LAYERS' prefix

    def sample(done: int, settle: float = 0.0, at_rest: int = 0) -> dict:
        # Sockets just closed: their server side is still leaving; wait (up to ``settle`` s) for the
        # subscriptions to come back to ``at_rest`` (the server's reply inbox stays subscribed).
        deadline = time.monotonic() + settle
        while (subscribed := len(client.pubsub_channels(f"{prefix}*"))) > at_rest and time.monotonic() < deadline:
            time.sleep(0.1)
        return {"requests": done, "server_rss_mib": round(rss_kib(server) / 1024, 1),
                "worker_rss_mib": round(rss_kib(worker) / 1024, 1),
                "redis_used_mib": round(client.info("memory")["used_memory"] / 2**20, 1),
                "log_rows_buffered": client.llen("gateway:logbuffer:requests"), "subscribed_channels": subscribed}

    face = {"kind": "http", "concurrency": SOAK_CONCURRENCY, "count": SOAK_REQUESTS // 2, "timeout": 900,
            "url": f"{urls['gateway']}/v1/chat/completions",
            "headers": {"Authorization": f"Bearer {demo['api_keys']['customer']}"},
            "body": {**CHAT_BODY, "model": "assistant"}}
    streamed = {**face, "body": {**face["body"], "stream": True}}
    rows = [sample(0)]
    for block in range(1, SOAK_BLOCKS + 1):
        results = [load(face), load(streamed)]
        rows.append({**sample(block * SOAK_REQUESTS), "rps": round(sum(r["rps"] for r in results) / 2, 1),
                     "errors": {k: v for r in results for k, v in (r["errors"] or {}).items()}})
        log(f"soak block {block}: {rows[-1]}")
    growth = {}
    if len(rows) > 2:
        first, last = rows[1], rows[-1]
        per = 1000 / (last["requests"] - first["requests"])
        growth = {key: round((last[key] - first[key]) * per, 2)
                  for key in ("server_rss_mib", "worker_rss_mib", "redis_used_mib", "log_rows_buffered",
                              "subscribed_channels")}
    slug = demo["channels"]["webchat"]["slug"]
    sockets = SOAK_REQUESTS // 10
    spec = {"kind": "ws_hold", "url": urls["gateway"].replace("http", "ws") + f"/ws/chat/{slug}/?visitor="
            + visitor_token(urls["gateway"], slug), "connections": sockets, "keep_for_chat": sockets,
            "message_sockets": sockets, "messages": sockets, "timeout": 600, "connect_concurrency": 50}
    web_chat = []  # four rounds: the RSS levels off once the allocator has reached the peak; a leak grows on
    for _round in range(4):
        chat = load(spec, stdin="go\n")
        web_chat.append({**sample(rows[-1]["requests"], settle=10.0, at_rest=rows[-1]["subscribed_channels"]),
                         "sockets": sockets, "rps": chat["rps"],
                         "errors": {**chat["errors"], **chat["connect_errors"]}})
        log(f"soak web chat: {web_chat[-1]}")
    return {"concurrency": SOAK_CONCURRENCY, "blocks": rows, "growth_per_1000_after_warmup": growth,
            "web_chat": web_chat}


def limit_step() -> dict:
    """The limit step (IP rules + rates + budget check) and the model-call hooks, at 100 concurrent,
    timed in a Django process against Redis (see bench/limits.py)."""
    code = "import json\nfrom bench.limits import measure\nprint(json.dumps(measure(concurrency=100, requests=5000)))"
    return {"code": code}


def main() -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # children inherit: 5,000 sockets each side
    log(f"fd limit {hard}; preparing {DATABASE_URL} and {REDIS_URL}")
    prepare_services()
    env = base_env(DATABASE_URL=DATABASE_URL, REDIS_URL=REDIS_URL, GATEWAY_USER_RATE="100000000/m",
                   LOG_LEVEL="WARNING", DJANGO_SETTINGS_MODULE="bench.settings")
    stack = Stack(env)
    results: dict = {"started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
                     "machine": {"cpus": os.cpu_count(), "fd_limit": hard}, "llm_delay_ms": float(LLM_DELAY_MS)}
    from devtools.fake_platforms import FakePlatforms

    platforms = FakePlatforms()  # Slack's Web API for the replies to the ingested Slack events
    platforms.start_in_thread()
    try:
        llm_url = stack.fake_llm("--delay-ms", LLM_DELAY_MS)
        stack.env.update(OPENAI_BASE_URL=llm_url, SLACK_API_BASE_URL=platforms.slack_base_url)
        stack.manage("migrate", "--noinput")
        demo = json.loads(stack.manage("seed_demo", "--json"))
        stack.worker(concurrency=WORKER_CONCURRENCY, pool=WORKER_POOL)
        # Beat, as in production: the request log is written from its buffer by a periodic task in
        # the worker, so each cell's CPU per answer includes writing its requests' log rows.
        stack.beat()
        urls = {"llm": llm_url, "gateway": getattr(stack, SERVER)()}
        urls["litellm"] = start_litellm(stack, llm_url)
        profiler = start_profiler(stack) if os.environ.get("BENCH_PROFILE") == "1" else None
        if "overhead" in SCENARIOS:
            results["overhead"] = overhead(stack, urls, demo)
        if profiler is not None:
            results["profile"] = stop_profiler(profiler)
        if "ingest" in SCENARIOS:
            results["ingest"] = ingest(stack, urls, demo)
        if "webchat" in SCENARIOS:
            results["webchat"] = webchat(stack, urls, demo)
        if "realistic" in SCENARIOS:
            results["realistic"] = realistic(stack, urls, demo)
        if SCENARIOS & {"realistic", "in_flight"}:
            results["in_flight"] = in_flight(stack, urls, demo)
            results["in_flight_queued"] = in_flight(stack, urls, demo, queued=True)
        if "scale_out" in SCENARIOS:
            results["scale_out"] = scale_out(stack, urls, demo)
        if "soak" in SCENARIOS:
            results["soak"] = soak(urls, demo, server=process_pid(stack, SERVER), worker=process_pid(stack, "celery"))
        results["process_log_errors"] = log_errors(stack)
        if "limits" in SCENARIOS:
            done = subprocess.run([PYTHON, "manage.py", "shell", "-c", limit_step()["code"]], cwd=BASE,
                                  env=stack.env, capture_output=True, text=True, timeout=300)
            results["limit_step"] = json.loads(done.stdout.strip().splitlines()[-1]) if done.returncode == 0 else {
                "error": done.stderr[-500:]}
    except Exception:
        print(stack.logs())
        raise
    finally:
        stack.stop()
        platforms.stop()
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    results["runs"] = {name: results["started"] for name in RESULT_KEYS if name in results}
    if (RESULTS / "latest.json").exists() and SCENARIOS != set(ALL_SCENARIOS):
        # A partial run (BENCH_SCENARIOS) keeps the other scenarios' latest results, each with its run's time.
        previous = json.loads((RESULTS / "latest.json").read_text())
        for name in RESULT_KEYS:
            if name not in results and name in previous:
                results[name] = previous[name]
                results["runs"][name] = previous.get("runs", {}).get(name, previous.get("started"))
    (RESULTS / "latest.json").write_text(json.dumps(results, indent=2))
    (RESULTS / f"{stamp}.json").write_text(json.dumps(results, indent=2))
    markdown = render(results)
    (RESULTS / "latest.md").write_text(markdown)
    print(markdown)


def start_profiler(stack: Stack) -> list | None:
    """py-spy on Daphne and on the Celery worker (raw folded stacks, kept out of git)."""
    pyspy = Path(PYTHON).parent / "py-spy"
    if not pyspy.exists():
        log("py-spy not installed; no profile")
        return None
    profilers = []
    for name in (SERVER, "celery"):
        out = stack.log_dir / f"{name}.pyspy.txt"
        proc = subprocess.Popen([str(pyspy), "record", "--pid", str(process_pid(stack, name)), "--format", "raw",
                                 "--output", str(out), "--rate", "100", "--nonblocking", "--threads"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        profilers.append((name, proc, out))
    return profilers


def stop_profiler(profilers) -> dict:
    """Top frames per process by inclusive share of the samples that were doing something."""
    import signal

    report = {}
    for name, proc, out in profilers:
        proc.send_signal(signal.SIGINT)
        proc.wait(60)
        inclusive: dict[str, int] = {}
        total = 0
        for line in out.read_text().splitlines() if out.exists() else []:
            stack_text, _, count = line.rpartition(" ")
            frames = stack_text.split(";")
            if any(idle in frames[-1] for idle in IDLE_FRAMES):
                continue  # a thread waiting (select, lock, queue): not where the time goes
            total += int(count)
            for frame in set(frames):
                inclusive[frame] = inclusive.get(frame, 0) + int(count)
        top = sorted(((f, n) for f, n in inclusive.items() if n < 0.97 * total), key=lambda kv: -kv[1])[:40]
        report[name] = {"busy_samples": total,
                        "top": [{"frame": f.split("site-packages/")[-1], "share": round(n / total, 3)} for f, n in top]}
    return report


IDLE_FRAMES = ("select (", "poll (", "wait (", "_wait_for_tstate_lock", "epoll", "sleep (", "acquire (",
               "_worker (concurrent", "get (queue", "recv_into (", "readinto (", "accept (socket")


def render(results: dict) -> str:
    lines = [f"# Benchmark results ({results['started']})", "",
             f"Machine: {results['machine']['cpus']} CPUs; fake_llm delay {results['llm_delay_ms']} ms; "
             f"one {SERVER}, one Celery worker ({WORKER_POOL}), one LiteLLM worker; load from a separate process "
             "on loopback.",
             "", "Runs: " + "; ".join(f"{name} {when}" for name, when in results.get("runs", {}).items()),
             "", "## Gateway overhead vs the model directly (median of interleaved rounds)", "",
             "| scenario | conc. | req/s | p50 ms | p95 ms | p99 ms | p50 overhead ms | errors |",
             "|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in results.get("overhead", []):
        lines.append(f"| {r['scenario']} | {r['concurrency']} | {r['rps']} | {r['p50_ms']} | {r['p95_ms']} | "
                     f"{r['p99_ms']} | {r['overhead_p50_ms']} | {r['errors'] or ''} |")
    lines += ["", "## Ingest (accepted = persisted + enqueued) vs a bare DRF endpoint on the same Daphne", "",
              "| scenario | conc. | accepted/s | p50 ms | p99 ms | ratio to ceiling | distinct | lost | duplicates "
              "| answered after drain | errors |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in results.get("ingest", []):
        lines.append(f"| {r['scenario']} | {r['concurrency']} | {r['rps']} | {r['p50_ms']} | {r['p99_ms']} | "
                     f"{r.get('ratio_to_ceiling', '')} | {r.get('distinct_keys', '')} | {r.get('lost', '')} | "
                     f"{r.get('duplicates', '')} | {r.get('answered', '')} | {r.get('errors') or ''} |")
    warmed = {r.get("warmup") for r in results.get("ingest", [])} - {None, 0}
    if warmed:
        failed: dict[str, int] = {}
        for r in results["ingest"]:
            for kind, count in (r.get("warmup_errors") or {}).items():
                failed[kind] = failed.get(kind, 0) + count
        lines += ["", f"Each row first sent {', '.join(map(str, sorted(warmed)))} warm-up requests of its own at the "
                      f"same concurrency, not timed or counted (warm-up errors: {failed or 'none'}); the Slack "
                      "warm-up events are distinct events from the same senders."]
    w = results.get("webchat")
    if w:
        lines += ["", "## Web chat (one " + SERVER + " process)", "",
                  f"- connections held: **{w['connections_held']}** of {w['connections_requested']} "
                  f"(connect errors {w['connect_errors'] or 'none'}, {w['connect_seconds']} s to connect)",
                  f"- server RSS {w['daphne_rss_before_mib']} MiB idle → {w['daphne_rss_held_mib']} MiB held: "
                  f"**{w['kib_per_connection']} KiB per connection**",
                  f"- message→reply with {w['connected_while_chatting']} connected "
                  f"({w['ok']} replies on 100 sockets, 5 messages each in turn): p50 **{w['p50_ms']} ms**, "
                  f"p95 {w['p95_ms']} ms, p99 {w['p99_ms']} ms ({w['errors'] or 'no errors'})"]
    if results.get("limit_step"):
        step = results["limit_step"]
        lines += ["", "## Limit step (bench/limits.py)", ""]
        if "error" in step:
            lines.append(f"- failed: {step['error']}")
        for name in ("harness", "limit_step_alone", "limit_step", "model_call_hooks_alone", "model_call_hooks"):
            if name in step:
                r = step[name]
                at = 1 if name.endswith("_alone") else step["concurrency"]
                lines.append(f"- {name} at {at} concurrent: p50 {r['p50_ms']} ms, "
                             f"p99 {r['p99_ms']} ms ({r['calls']} calls)")
    if results.get("realistic"):
        lines += ["", "## Realistic latency: model 1 s (worker " + str(results.get("in_flight", {}).get(
            "worker_pool", "")) + ")", "",
                  "| scenario | conc. | req/s | share of direct | p50 ms | p95 ms | p50 overhead ms | errors |",
                  "|---|---:|---:|---:|---:|---:|---:|---|"]
        for r in results["realistic"]:
            lines.append(f"| {r['scenario']} | {r['concurrency']} | {r['rps']} | {r['share_of_direct']} | "
                         f"{r['p50_ms']} | {r['p95_ms']} | {r['overhead_p50_ms']} | {r['errors'] or ''} |")
        metered = [r for r in results["realistic"] if r.get("cpu")]
        if metered:
            lines += ["", "CPU ms per answer in each cell, by process (the load generator's start included), and how "
                      "busy the machine's CPUs were:", "",
                      "| scenario | conc. | server | worker | PostgreSQL | Redis | fake_llm | LiteLLM | load | "
                      "machine busy |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
            for r in metered:
                c = r["cpu"]
                lines.append(f"| {r['scenario']} | {r['concurrency']} | {c['server']} | {c['worker']} | "
                             f"{c['postgres']} | {c['redis']} | {c['fake_llm']} | {c['litellm']} | {c['load']} | "
                             f"{c['machine_busy']:.0%} |")
    flights = [f for f in (results.get("in_flight"), results.get("in_flight_queued")) if f]
    if flights:
        lines += ["", "## In flight: one worker", "",
                  "Paced: runs start as messages are accepted (peak ≈ accept rate × model latency). Queued: the "
                  "worker is paused while all are accepted, then takes up the whole backlog at once.", ""]
        for f in flights:
            lines += [f"- {f.get('mode', 'paced')}, model {f.get('model_latency_s', 5)} s: {f['accepted']} of "
                      f"{f['runs']} accepted at {f.get('accept_rps')} req/s ({f['accept_errors'] or 'no errors'}); "
                      f"peak runs in flight **{f['peak_in_flight']}**; worker ({f['worker_pool']}) RSS "
                      f"{f['worker_rss_before_mib']} → **{f['worker_rss_peak_mib']} MiB**; database connections "
                      f"(all gateway processes) peak {f['db_connections_peak_all_processes']}, active at once "
                      f"{f['db_connections_active_peak']}; unanswered after drain {f['left_unanswered']}"
                      + (f"; model calls at once, peak **{f['model_calls_peak_at_once']}**, a call p50 "
                         f"{f['model_call_p50_ms']} ms (max {f['model_call_max_ms']}), runs started over "
                         f"{f['runs_started_over_s']} s" if "model_calls_peak_at_once" in f else "")]
    if results.get("process_log_errors") is not None:
        lines += ["", "Errors logged by the gateway's processes during the run (ERROR or CRITICAL records): "
                  + (", ".join(f"{name}: {n}" for name, n in results["process_log_errors"].items()) or "none")]
    if results.get("scale_out"):
        cpus = results["scale_out"][0]["cpus"]
        lines += ["", "## Scale-out: the face, model 1 s, one pair of processes, a second worker, then two "
                  f"pairs ({cpus} CPUs)", "",
                  "| processes | conc. | req/s | ratio | p50 ms | CPU ms per answer (server + worker) | errors |",
                  "|---|---:|---:|---:|---:|---:|---|"]
        for r in results["scale_out"]:
            ratio = r.get("ratio_to_one_pair", 1.0)
            lines.append(f"| {r['scenario']} | {r['concurrency']} | {r['rps']} | {'–' if ratio is None else ratio} | "
                         f"{r['p50_ms']} | {r['cpu_ms_per_answer_gateway_processes']} | {r['errors'] or ''} |")
    if results.get("soak"):
        soaked = results["soak"]
        lines += ["", "## Soak: memory over a long run "
                      f"(the face, half streamed, model 0 ms, concurrency {soaked['concurrency']})", "",
                  "| requests | server RSS MiB | worker RSS MiB | Redis used MiB | log rows buffered "
                  "| subscribed channels | req/s | errors |", "|---:|---:|---:|---:|---:|---:|---:|---|"]
        for r in soaked["blocks"]:
            lines.append(f"| {r['requests']} | {r['server_rss_mib']} | {r['worker_rss_mib']} | {r['redis_used_mib']} | "
                         f"{r['log_rows_buffered']} | {r['subscribed_channels']} | {r.get('rps', '')} | "
                         f"{r.get('errors') or ''} |")
        for r in soaked.get("web_chat") or []:
            lines.append(f"| then {r['sockets']} web chat sockets, one message each, closed | {r['server_rss_mib']} | "
                         f"{r['worker_rss_mib']} | {r['redis_used_mib']} | {r['log_rows_buffered']} | "
                         f"{r['subscribed_channels']} | {r['rps']} | {r.get('errors') or ''} |")
        if soaked["growth_per_1000_after_warmup"]:
            lines += ["", "Growth per 1,000 requests after the first block: " + ", ".join(
                f"{key.replace('_', ' ')} {value}" for key, value in soaked["growth_per_1000_after_warmup"].items())]
    for name, profile in (results.get("profile") or {}).items():
        lines += ["", f"## Profile of {name} during the overhead runs (inclusive share of busy samples)", ""]
        lines += [f"- {p['share']:.1%} {p['frame']}" for p in profile["top"][:25]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()

"""``make bench-floor``: what the fixed stack's own parts cost per message, before the gateway's code.

Issue 16 asks the OpenAI face, at 0 ms model latency, for a quarter of LiteLLM's CPU per message
(summed over every gateway process, PostgreSQL and Redis) and three times its throughput. DESIGN.md
fixes the parts a message crosses: an HTTP request on an ASGI server, a Celery task on Redis that
runs the agent, the ``openai`` client, the message, its reply and its log row in PostgreSQL, and
the reply carried back on Redis pub/sub. This bench measures each part done several ways, alone,
doing nothing else, in real processes, in the same run as the face and LiteLLM's proxy:

- server: Django's own ASGI handler on uvicorn, no middleware, one async view (bench/floor_urls.py),
  or a Channels ``AsyncHttpConsumer`` without Django's handler (bench/floor_asgi.py);
- queue and wake: a Celery task on a gevent worker that only wakes its waiters on pub/sub (one
  shared subscription, as each server process holds), one task per message or one per BATCH;
- model call: ``chat.completions.create``, ``client.post`` parsed (the gateway's way) or raw JSON;
- writes: message + reply + LLM-call row through the ORM in one transaction, as one statement, or
  BATCH messages' rows per transaction.

Three floors are summed from them: each part the plain way, the cheapest way one message at a
time, and the cheapest with batches. A floor leaves out all the gateway's own work (authentication,
limits, routing, budgets, the conversation order, logs). The ways of the queue, model and writes
parts are interleaved in blocks; the median of each figure over the rounds is reported. Redis's
CPU is every redis-server on the machine: run it on a quiet one.

Knobs: BENCH_DATABASE_URL, BENCH_REDIS_URL (as bench/run.py: both wiped), BENCH_FLOOR_ROUNDS (3),
BENCH_FLOOR_REQUESTS (1,000 per way and round), BENCH_FLOOR_CONCURRENCY (10),
BENCH_SKIP_LITELLM=1. Writes bench/results/floor.md (committed) and floor.json (not), and prints the
tables; ``--render`` prints the last run's tables again.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

BASE = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(BASE))

ROUNDS = int(os.environ.get("BENCH_FLOOR_ROUNDS", "3"))
REQUESTS = int(os.environ.get("BENCH_FLOOR_REQUESTS", "1000"))
CONCURRENCY = int(os.environ.get("BENCH_FLOOR_CONCURRENCY", "10"))
WARMUP = 100
FLOOR_QUEUE = "bench-floor"


# ---- the parts that run in a process of their own (``floor.py --part NAME SPEC``) ----
# Each part times its ways in BLOCKS interleaved blocks, after a warm-up of each, and returns the
# CPU per message of each way: its own process (process_time) and the processes it reads from /proc.

BLOCKS = 5
BATCH = 10  # messages per task, per pipelined wake-up and per transaction in the batched ways


def timed_blocks(ways: dict, count: int, extra=lambda: {}) -> dict:
    """``ways``: name -> (call, messages per call). Returns name -> {"self": ms, **extra's, per message}."""
    for call, per in ways.values():
        for _ in range(max(WARMUP // per, 1)):
            call()
    spent = {name: {"self": 0.0, "messages": 0} for name in ways}
    for _ in range(BLOCKS):
        for name, (call, per) in ways.items():
            calls = max(count // BLOCKS // per, 1)
            before_extra, before = extra(), time.process_time()
            for _ in range(calls):
                call()
            spent[name]["self"] += time.process_time() - before
            for key, value in extra().items():
                spent[name][key] = spent[name].get(key, 0.0) + value - before_extra[key]
            spent[name]["messages"] += calls * per
    return {name: {key: value * 1000 / s["messages"] for key, value in s.items() if key != "messages"}
            for name, s in spent.items()}


def part_queue(spec: dict) -> dict:
    """Wake tasks published from ``concurrency`` threads, each waiting for its wake-ups: one task per
    message, or one per BATCH messages."""
    import django

    django.setup()
    import redis
    from django.conf import settings

    from bench.floor_tasks import wake, wake_many
    from bench.run import TICK_MS, cpu_ticks, redis_ticks

    client = redis.Redis.from_url(settings.REDIS_URL)
    pubsub = client.pubsub()
    pubsub.psubscribe("floor.wake.*")
    waiting: dict[bytes, threading.Event] = {}
    subscribed = threading.Event()
    missed = 0
    counting = threading.Lock()

    def listen() -> None:
        for item in pubsub.listen():
            if item["type"] == "psubscribe":
                subscribed.set()
            elif item["type"] == "pmessage" and (event := waiting.pop(item["channel"], None)):
                event.set()

    threading.Thread(target=listen, daemon=True).start()
    subscribed.wait(10)

    def send(task, n: int) -> None:
        nonlocal missed
        channels = [f"floor.wake.{uuid.uuid4().hex}" for _ in range(n)]
        events = [waiting.setdefault(c.encode(), threading.Event()) for c in channels]
        task.apply_async((channels[0] if task is wake else channels,), queue=FLOOR_QUEUE, declare=[])
        lost = sum(not e.wait(30) for e in events)
        with counting:
            missed += lost

    pool = ThreadPoolExecutor(spec["concurrency"])

    def concurrently(task, n: int):
        calls = spec["concurrency"]
        return lambda: list(pool.map(lambda _i: send(task, n), range(calls)))

    def others() -> dict:
        return {"worker": cpu_ticks(spec["worker"]) * TICK_MS / 1000, "redis": redis_ticks() * TICK_MS / 1000}

    conc = spec["concurrency"]
    result = timed_blocks({"one task per message": (concurrently(wake, 1), conc),
                           f"one task per {BATCH} messages": (concurrently(wake_many, BATCH), conc * BATCH)},
                          spec["count"], others)
    pool.shutdown()
    return {**result, "missed": missed}


def part_model(spec: dict) -> dict:
    import httpx2
    import openai
    from openai.types.chat import ChatCompletion

    client = openai.OpenAI(base_url=spec["llm_url"], api_key="x", max_retries=0)
    messages = [{"role": "user", "content": "benchmark hello"}]
    body = {"model": "fake-gpt", "messages": messages}
    return timed_blocks({
        "chat.completions.create": (lambda: client.chat.completions.create(model="fake-gpt", messages=messages), 1),
        "client.post, parsed (the gateway's)": (
            lambda: client.post("/chat/completions", body=body, cast_to=ChatCompletion), 1),
        "client.post, raw JSON": (
            lambda: json.loads(client.post("/chat/completions", body=body, cast_to=httpx2.Response).content), 1),
    }, spec["count"])


def part_writes(spec: dict) -> dict:
    """The three rows a message leaves: through the ORM in a transaction, as one statement, or ten
    messages' rows in one transaction."""
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.db import connection, transaction

    from apps.agents.models import Agent
    from apps.connectors.models import Channel
    from apps.conversations.models import Conversation, Message
    from apps.logs.models import LLMCall
    from bench.run import TICK_MS, cpu_ticks
    from gateway_project.db import _insert_sql

    channel = Channel.objects.get(slug=spec["channel"])
    user = get_user_model().objects.order_by("pk").first()
    agent = Agent.objects.get(slug="assistant")
    conversation = Conversation.objects.create(channel=channel, user=user, agent=agent)

    def rows() -> tuple:
        inbound = Message(id=uuid.uuid4(), conversation=conversation, channel=channel, direction="in",
                          status="answered", sender=user, text="benchmark hello")
        reply = Message(id=uuid.uuid4(), conversation=conversation, channel=channel, direction="out", status="sent",
                        reply_to=inbound, agent=agent, text="Echo: benchmark hello", model="fake-gpt",
                        prompt_tokens=2, completion_tokens=3, total_tokens=5, latency_ms=1)
        call = LLMCall(message=inbound, conversation=conversation, user=user, channel=channel, agent=agent,
                       model="fake-gpt", provider="demo", prompt_tokens=2, completion_tokens=3, total_tokens=5,
                       latency_ms=1, status="ok")
        return inbound, reply, call

    def orm() -> None:
        with transaction.atomic():
            for row in rows():
                row.save(force_insert=True)

    def one_statement() -> None:  # gateway_project.db.write_together's way, three rows
        (a, pa), (b, pb), (c, pc) = (_insert_sql(row) for row in rows())
        with connection.cursor() as cursor:
            cursor.execute(f"WITH a AS ({a}), b AS ({b}) {c}", [*pa, *pb, *pc])

    def batched() -> None:
        batch = [rows() for _ in range(BATCH)]
        with transaction.atomic():
            for model, column in ((Message, 0), (Message, 1), (LLMCall, 2)):
                model.objects.bulk_create([r[column] for r in batch])

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        backend = cursor.fetchone()[0]
    return timed_blocks({"ORM, one transaction": (orm, 1), "one statement": (one_statement, 1),
                         f"{BATCH} messages per transaction": (batched, BATCH)}, spec["count"],
                        lambda: {"postgres": cpu_ticks(backend) * TICK_MS / 1000})


def run_part(stack, name: str, spec: dict, settings_module: str = "gateway_project.settings") -> dict:
    from devtools.stack import PYTHON

    done = subprocess.run([PYTHON, str(Path(__file__)), "--part", name, json.dumps(spec)], cwd=BASE,
                          env={**stack.env, "DJANGO_SETTINGS_MODULE": settings_module},
                          capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise RuntimeError(f"part {name} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.splitlines()[-1])


# ---- the orchestration ----

SERVERS = {  # way -> (the server's ASGI app, DJANGO_SETTINGS_MODULE, uvicorn --factory)
    "Django's handler, no middleware": ("django.core.asgi:get_asgi_application", "bench.floor_settings", True),
    "a Channels consumer, no Django handler": ("bench.floor_asgi:application", "bench.floor_settings", False),
}
COLUMNS = ("server", "worker", "postgres", "redis")


def start_server(stack, app: str, settings_module: str, factory: bool) -> tuple[str, int]:
    from devtools.stack import BIN, UVICORN_OPTIONS, free_port

    port = free_port()
    process = stack.spawn("uvicorn-floor", [
        str(BIN / "uvicorn"), *UVICORN_OPTIONS, "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
        *(["--factory"] if factory else []), app], env={"DJANGO_SETTINGS_MODULE": settings_module})
    url = f"http://127.0.0.1:{port}"
    process.wait_for_http(f"{url}/healthz")
    return url, process.popen.pid


def start_floor_worker(stack) -> int:
    from devtools.stack import BIN

    process = stack.spawn("celery-floor", [
        str(BIN / "celery"), "-A", "gateway_project", "worker", "-P", "gevent", "-c", "1000", "-Q", FLOOR_QUEUE,
        "-I", "bench.floor_tasks", "-l", "INFO", "--without-mingle", "--without-gossip", "--without-heartbeat",
        "-n", f"floor-{os.getpid()}@%h"])
    process.wait_for_log(r"ready\.", timeout=60)
    return process.popen.pid


def server_cpu(url: str, pid: int) -> dict:
    """The server's CPU per request of ``url`` at CONCURRENCY."""
    from bench import run

    spec = {"kind": "http", "concurrency": CONCURRENCY, "timeout": 300, "request_timeout": 60, "url": url,
            "body": {"message": "benchmark hello"}, "ok_status": [202]}
    run.load({**spec, "count": WARMUP})
    before = run.cpu_ticks(pid)
    result = run.load({**spec, "count": REQUESTS})
    return {"server": (run.cpu_ticks(pid) - before) * run.TICK_MS / max(result["ok"], 1), "rps": result["rps"],
            "errors": result["errors"]}


def one_round(stack, urls: dict, servers: dict, worker: int, demo: dict, backends) -> dict:
    """(part, way) -> CPU ms per message by process, for every way of every part, then the face and LiteLLM."""
    from bench import overrides_ab

    measured: dict[tuple[str, str], dict] = {}
    for way, (url, pid) in servers.items():
        measured["server", way] = server_cpu(f"{url}/floor/echo", pid)
    queue = run_part(stack, "queue", {"count": REQUESTS, "concurrency": CONCURRENCY, "worker": worker})
    missed = queue.pop("missed")
    for way, cpu in queue.items():
        measured["queue and wake", way] = {"server": cpu["self"], "worker": cpu["worker"], "redis": cpu["redis"],
                                           "errors": {"missed": missed} if missed else {}}
    for way, cpu in run_part(stack, "model", {"count": REQUESTS, "llm_url": urls["llm"]}).items():
        measured["model call", way] = {"worker": cpu["self"]}
    writes = run_part(stack, "writes", {"count": REQUESTS, "channel": demo["channels"]["api"]["slug"]})
    for way, cpu in writes.items():
        measured["writes", way] = {"worker": cpu["self"], "postgres": cpu["postgres"]}

    # Beside the floor: DRF behind the gateway's middleware (bench/urls.py), the face, LiteLLM.
    measured["beside", "a sync DRF view behind the gateway's middleware"] = server_cpu(
        f"{urls['drf']}/bench/bare", urls["drf_pid"])
    face = overrides_ab.one_round(stack, ("", "uvicorn"), demo, backends)
    measured["beside", "the gateway's face"] = {**face["cpu_ms"], "rps": face["rps"], "errors": face["errors"]}
    if urls.get("litellm"):
        peer = overrides_ab.litellm_round(stack, urls["litellm"])
        measured["beside", "LiteLLM proxy"] = {"server": peer["cpu_ms"]["server"], "rps": peer["rps"],
                                               "errors": peer["errors"]}
    for row in measured.values():
        row["cpu_ms"] = sum(row.get(column, 0.0) for column in COLUMNS)
    return measured


def summarize(rounds: list[dict]) -> dict:
    rows = {}
    for key in rounds[0]:
        results = [r[key] for r in rounds]
        row = {column: statistics.median(r.get(column, 0.0) for r in results) for column in (*COLUMNS, "cpu_ms")}
        row["rps"] = statistics.median(r.get("rps") or 0.0 for r in results)
        row["cpu_rounds"] = [round(r["cpu_ms"], 2) for r in results]
        row["errors"] = {k: sum(r.get("errors", {}).get(k, 0) for r in results)
                         for r in results for k in r.get("errors", {})}
        rows[" / ".join(key)] = {"part": key[0], "way": key[1], **row}
    floors = {}
    parts = [p for p in dict.fromkeys(r["part"] for r in rows.values()) if p != "beside"]
    one_at_a_time = [w for w in rows.values() if f"{BATCH} messages" not in w["way"]]  # the batched ways' names
    gateways = ("Django's handler, no middleware", "one task per message", "client.post, parsed (the gateway's)",
                "one statement")  # the ways the gateway's face uses today
    for name, allowed in (("each part the plain way", lambda ways: ways[:1]),
                          ("the gateway's ways", lambda ways: [w for w in ways if w["way"] in gateways]),
                          ("the cheapest way, one message at a time",
                           lambda ways: [w for w in ways if w in one_at_a_time]),
                          (f"the cheapest way, {BATCH} messages at a time", lambda ways: ways)):
        chosen = [min(allowed([r for r in rows.values() if r["part"] == part]), key=lambda r: r["cpu_ms"])
                  for part in parts]
        floors[name] = {"ways": [c["way"] for c in chosen],
                        **{column: sum(c[column] for c in chosen) for column in (*COLUMNS, "cpu_ms")}}
    return {"rows": rows, "floors": floors}


def render(summary: dict, meta: dict) -> str:
    rows, floors = summary["rows"], summary["floors"]
    lines = [f"Floor of the fixed stack ({meta['started']}, {meta['cpus']} CPUs, load average {meta['load_before']} "
             f"before, {meta['load_after']} after; {meta['rounds']} rounds of {meta['requests']} per way; HTTP, the "
             f"face and LiteLLM at concurrency {meta['concurrency']}, tasks from {meta['concurrency']} threads, model "
             f"calls and writes one at a time; model 0 ms; the median of each figure over the rounds; "
             f"{meta['minutes']} min)", "",
             "| part | way | CPU ms/msg | server | worker | PostgreSQL | Redis | req/s | CPU rounds | errors |",
             "|---|---|---:|---:|---:|---:|---:|---:|---|---|"]
    for row in rows.values():
        cells = " | ".join(f"{row[c]:.2f}" for c in COLUMNS)
        rps = f"{row['rps']:.1f}" if row["rps"] else ""
        lines.append(f"| {row['part']} | {row['way']} | {row['cpu_ms']:.2f} | {cells} | {rps} | "
                     f"{' / '.join(f'{x:.2f}' for x in row['cpu_rounds'])} | {row['errors'] or ''} |")
    lines += ["", "| floor | CPU ms/msg | server | worker | PostgreSQL | Redis | ways |",
              "|---|---:|---:|---:|---:|---:|---|"]
    for name, floor in floors.items():
        cells = " | ".join(f"{floor[c]:.2f}" for c in COLUMNS)
        lines.append(f"| {name} | **{floor['cpu_ms']:.2f}** | {cells} | {'; '.join(floor['ways'])} |")
    face = rows["beside / the gateway's face"]["cpu_ms"]
    peer = rows.get("beside / LiteLLM proxy")
    lines.append("")
    for name, floor in floors.items():
        text = f"- {name}: the face costs {face / floor['cpu_ms']:.2f}× it"
        if peer:
            text += (f"; it is {floor['cpu_ms'] / (peer['cpu_ms'] / 4):.2f}× a quarter of LiteLLM's "
                     f"{peer['cpu_ms']:.2f} ms, and three times LiteLLM's {peer['rps']:.1f} req/s would take "
                     f"{3 * peer['rps'] * floor['cpu_ms'] / 1000:.2f} of the {meta['cpus']} cores for it alone")
        lines.append(text + ".")
    return "\n".join(lines) + "\n"


def main() -> None:
    from bench import overrides_ab, run

    started = time.monotonic()
    meta = {"started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpus": os.cpu_count(),
            "load_before": " ".join(f"{x:.1f}" for x in os.getloadavg()), "rounds": ROUNDS, "requests": REQUESTS,
            "concurrency": CONCURRENCY}
    overrides_ab.CONCURRENCY, overrides_ab.REQUESTS, overrides_ab.DOOR = CONCURRENCY, REQUESTS, "face"
    run.log(f"load average {meta['load_before']}; preparing {run.DATABASE_URL} and {run.REDIS_URL}")
    run.prepare_services()
    stack = run.Stack(run.base_env(DATABASE_URL=run.DATABASE_URL, REDIS_URL=run.REDIS_URL,
                                   GATEWAY_USER_RATE="100000000/m", LOG_LEVEL="WARNING"))
    rounds = []
    with run.shown_on_failure(stack):
        urls = {"llm": stack.fake_llm("--delay-ms", "0")}
        stack.env["OPENAI_BASE_URL"] = urls["llm"]
        urls["litellm"] = run.start_litellm(stack, urls["llm"])
        stack.manage("migrate", "--noinput")
        demo = json.loads(stack.manage("seed_demo", "--json"))
        servers = {way: start_server(stack, *how) for way, how in SERVERS.items()}
        urls["drf"] = stack.uvicorn(env={"DJANGO_SETTINGS_MODULE": "bench.settings"})
        urls["drf_pid"] = run.process_pid(stack, "uvicorn")
        worker = start_floor_worker(stack)
        backends = run.PostgresBackends()
        for number in range(ROUNDS):
            rounds.append(one_round(stack, urls, servers, worker, demo, backends))
            run.log(f"round {number + 1}: " + ", ".join(f"{' / '.join(k)} {v['cpu_ms']:.2f}"
                                                       for k, v in rounds[-1].items()))
    run.finish_meta(meta, started)
    summary = summarize(rounds)
    run.RESULTS.mkdir(parents=True, exist_ok=True)
    saved = {"meta": meta, **summary, "rounds": [{" / ".join(k): v for k, v in r.items()} for r in rounds]}
    (run.RESULTS / "floor.json").write_text(json.dumps(saved, indent=2))
    (run.RESULTS / "floor.md").write_text(render(summary, meta))
    print(render(summary, meta))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--part"]:
        part = {"queue": part_queue, "model": part_model, "writes": part_writes}[sys.argv[2]]
        print(json.dumps(part(json.loads(sys.argv[3]))))
    elif sys.argv[1:] == ["--render"]:
        saved = json.loads((BASE / "bench" / "results" / "floor.json").read_text())
        print(render(saved, saved["meta"]))
    else:
        main()

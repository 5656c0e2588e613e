"""``make bench-floor``: what the fixed stack's own parts cost per message, before the gateway's code.

Issue 16 asks the OpenAI face, at 0 ms model latency, for a quarter of LiteLLM's CPU per message
(summed over every gateway process, PostgreSQL and Redis) and three times its throughput. DESIGN.md
fixes the stack a message crosses: an ASGI server running Django, a Celery task on Redis that runs
the agent, the ``openai`` client, the message, its reply and its log row written to PostgreSQL, and
the reply carried back on Redis pub/sub. This bench measures each of those parts alone, doing
nothing else, in real processes on the same machine and in the same run as LiteLLM and the face:

- ``django_asgi``: uvicorn (the image's options) serving Django's own ASGI handler with no
  middleware and one async view that parses the JSON body (bench/floor_urls.py; no DRF, no auth,
  no limits); the server's CPU per request.
- ``queue_and_wake``: a Celery task published the gateway's way (Redis, ``declare=[]``) to a gevent
  worker, whose task only publishes on Redis pub/sub to the waiter (one shared subscription, as
  each server process holds); the publisher's, the worker's and Redis's CPU per round trip.
- ``model_call``: one ``chat.completions.create`` of the ``openai`` client against ``fake_llm``;
  the caller's CPU per call (the model's own is not counted, as in the face's figure).
- ``writes``: the inbound message, its reply and its LLM-call row created through the ORM in one
  transaction; the writer's and its PostgreSQL backend's CPU per message.

Their sum is the floor: the CPU any message through this stack costs before authentication,
limits, routing, budgets, ordering or any of the gateway's own work. Beside it, the same run measures
the face (all of that; `bench/overrides_ab.py`'s round) and LiteLLM's proxy (its process tree),
both at concurrency ``BENCH_FLOOR_CONCURRENCY`` (10). Rounds are interleaved; the median is reported.
Redis's CPU is every redis-server on the machine: run it on a quiet one.

Knobs: BENCH_DATABASE_URL, BENCH_REDIS_URL (as bench/run.py: both wiped), BENCH_FLOOR_ROUNDS (3),
BENCH_FLOOR_REQUESTS (1,000 per part and round), BENCH_FLOOR_CONCURRENCY (10),
BENCH_SKIP_LITELLM=1. Writes bench/results/floor.md (committed) and floor.json (not), and prints the
table; ``--render`` prints the last run's table again.
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
PARTS = ("django_asgi", "queue_and_wake", "model_call", "writes")


# ---- the parts that run in a process of their own (``floor.py --part NAME SPEC``) ----

def part_queue(spec: dict) -> dict:
    """Publish ``count`` wake tasks from ``concurrency`` threads, each waiting for its wake-up."""
    import django

    django.setup()
    import redis
    from django.conf import settings

    from bench.floor_tasks import wake

    client = redis.Redis.from_url(settings.REDIS_URL)
    pubsub = client.pubsub()
    pubsub.psubscribe("floor.wake.*")
    waiting: dict[bytes, threading.Event] = {}
    subscribed = threading.Event()

    def listen() -> None:
        for item in pubsub.listen():
            if item["type"] == "psubscribe":
                subscribed.set()
            elif item["type"] == "pmessage" and (event := waiting.pop(item["channel"], None)):
                event.set()

    threading.Thread(target=listen, daemon=True).start()
    subscribed.wait(10)
    missed = 0

    def one(_i: int) -> None:
        nonlocal missed
        channel = f"floor.wake.{uuid.uuid4().hex}"
        event = waiting[channel.encode()] = threading.Event()
        wake.apply_async((channel,), queue=FLOOR_QUEUE, declare=[])
        if not event.wait(30):
            missed += 1

    with ThreadPoolExecutor(spec["concurrency"]) as pool:
        list(pool.map(one, range(WARMUP)))
        cpu, wall = time.process_time(), time.perf_counter()
        list(pool.map(one, range(spec["count"])))
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return {"cpu_ms": cpu * 1000 / spec["count"], "rps": spec["count"] / wall, "missed": missed}


def part_model(spec: dict) -> dict:
    import openai

    client = openai.OpenAI(base_url=spec["llm_url"], api_key="x", max_retries=0)
    messages = [{"role": "user", "content": "benchmark hello"}]
    for _ in range(WARMUP):
        client.chat.completions.create(model="fake-gpt", messages=messages)
    cpu = time.process_time()
    for _ in range(spec["count"]):
        client.chat.completions.create(model="fake-gpt", messages=messages)
    return {"cpu_ms": (time.process_time() - cpu) * 1000 / spec["count"]}


def part_writes(spec: dict) -> dict:
    """The three rows a message leaves, one transaction each message, as few as the ORM writes them."""
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.db import connection, transaction

    from apps.agents.models import Agent
    from apps.connectors.models import Channel
    from apps.conversations.models import Conversation, Message
    from apps.logs.models import LLMCall
    from bench.run import TICK_MS, cpu_ticks

    channel = Channel.objects.get(slug=spec["channel"])
    user = get_user_model().objects.order_by("pk").first()
    agent = Agent.objects.get(slug="assistant")
    conversation = Conversation.objects.create(channel=channel, user=user, agent=agent)

    def one() -> None:
        with transaction.atomic():
            inbound = Message.objects.create(conversation=conversation, channel=channel, direction="in",
                                             status="answered", sender=user, text="benchmark hello")
            Message.objects.create(conversation=conversation, channel=channel, direction="out", status="sent",
                                   reply_to=inbound, agent=agent, text="Echo: benchmark hello", model="fake-gpt",
                                   prompt_tokens=2, completion_tokens=3, total_tokens=5, latency_ms=1)
            LLMCall.objects.create(message=inbound, conversation=conversation, user=user, channel=channel,
                                   agent=agent, model="fake-gpt", provider="demo", prompt_tokens=2,
                                   completion_tokens=3, total_tokens=5, latency_ms=1, status="ok")

    for _ in range(WARMUP):
        one()
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        backend = cursor.fetchone()[0]
    cpu, pg = time.process_time(), cpu_ticks(backend)
    for _ in range(spec["count"]):
        one()
    return {"cpu_ms": (time.process_time() - cpu) * 1000 / spec["count"],
            "postgres_ms": (cpu_ticks(backend) - pg) * TICK_MS / spec["count"]}


def run_part(stack, name: str, spec: dict, settings_module: str = "gateway_project.settings") -> dict:
    from devtools.stack import PYTHON

    done = subprocess.run([PYTHON, str(Path(__file__)), "--part", name, json.dumps(spec)], cwd=BASE,
                          env={**stack.env, "DJANGO_SETTINGS_MODULE": settings_module},
                          capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"part {name} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.splitlines()[-1])


# ---- the orchestration ----

def start_bare_server(stack) -> tuple[str, int]:
    from devtools.stack import BIN, UVICORN_OPTIONS, free_port

    port = free_port()
    process = stack.spawn("uvicorn-floor", [
        str(BIN / "uvicorn"), *UVICORN_OPTIONS, "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
        "--factory", "django.core.asgi:get_asgi_application"], env={"DJANGO_SETTINGS_MODULE": "bench.floor_settings"})
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


def one_round(stack, urls: dict, pids: dict, demo: dict, backends) -> dict:
    from bench import overrides_ab, run

    measured: dict[str, dict] = {}
    spec = {"kind": "http", "concurrency": CONCURRENCY, "timeout": 300, "request_timeout": 60,
            "url": f"{urls['bare']}/floor/echo", "body": {"message": "benchmark hello"}, "ok_status": [202]}
    run.load({**spec, "count": WARMUP})
    before = run.cpu_ticks(pids["bare"])
    result = run.load({**spec, "count": REQUESTS})
    measured["django_asgi"] = {"server": (run.cpu_ticks(pids["bare"]) - before) * run.TICK_MS / max(result["ok"], 1),
                               "rps": result["rps"], "errors": result["errors"]}

    worker, redis = run.cpu_ticks(pids["worker"]), overrides_ab.redis_ticks()
    queue = run_part(stack, "queue", {"count": REQUESTS, "concurrency": CONCURRENCY})
    worker, redis = run.cpu_ticks(pids["worker"]) - worker, overrides_ab.redis_ticks() - redis
    # The worker and Redis also served the part's warm-up: counted with it, per round trip.
    trips = REQUESTS + WARMUP
    measured["queue_and_wake"] = {"server": queue["cpu_ms"], "worker": worker * run.TICK_MS / trips,
                                  "redis": redis * run.TICK_MS / trips, "rps": queue["rps"],
                                  "errors": {"missed": queue["missed"]} if queue["missed"] else {}}

    model = run_part(stack, "model", {"count": REQUESTS, "llm_url": urls["llm"]})
    measured["model_call"] = {"worker": model["cpu_ms"]}

    writes = run_part(stack, "writes", {"count": REQUESTS, "channel": demo["channels"]["api"]["slug"]})
    measured["writes"] = {"worker": writes["cpu_ms"], "postgres": writes["postgres_ms"]}

    face = overrides_ab.one_round(stack, ("", "uvicorn"), demo, backends)
    measured["face"] = {**face["cpu_ms"], "rps": face["rps"], "errors": face["errors"]}
    if urls.get("litellm"):
        peer = overrides_ab.litellm_round(stack, urls["litellm"])
        measured["litellm"] = {"server": peer["cpu_ms"]["server"], "rps": peer["rps"], "errors": peer["errors"]}
    for row in measured.values():
        row["cpu_ms"] = sum(row.get(p, 0.0) for p in ("server", "worker", "postgres", "redis"))
    return measured


def summarize(rounds: list[dict]) -> dict:
    rows = {}
    for name in rounds[0]:
        results = [r[name] for r in rounds]
        row = {key: statistics.median(r.get(key, 0.0) for r in results)
               for key in ("cpu_ms", "server", "worker", "postgres", "redis", "rps")}
        row["cpu_rounds"] = [round(r["cpu_ms"], 2) for r in results]
        row["errors"] = {k: sum(r.get("errors", {}).get(k, 0) for r in results)
                         for r in results for k in r.get("errors", {})}
        rows[name] = row
    parts = ("cpu_ms", "server", "worker", "postgres", "redis")
    rows["floor"] = {key: sum(rows[p][key] for p in PARTS) for key in parts}
    return rows


def render(rows: dict, meta: dict) -> str:
    names = {"django_asgi": "Django on uvicorn, no middleware, one async view", "queue_and_wake":
             "a Celery task (gevent worker) that wakes the waiter on pub/sub", "model_call":
             "one `openai` client call", "writes": "message + reply + LLM-call row, ORM, one transaction",
             "floor": "**the floor: the four parts**", "face": "the gateway's face, `/v1/chat/completions`",
             "litellm": "LiteLLM proxy (its process tree)"}
    lines = [f"Floor of the fixed stack ({meta['started']}, {meta['cpus']} CPUs, load average {meta['load_before']} "
             f"before, {meta['load_after']} after; {meta['rounds']} interleaved rounds of {meta['requests']} "
             f"per part, concurrency {meta['concurrency']}, model 0 ms; {meta['minutes']} min)", "",
             "| part | CPU ms/msg | server | worker | PostgreSQL | Redis | req/s | CPU rounds | errors |",
             "|---|---:|---:|---:|---:|---:|---:|---|---|"]
    for key, row in rows.items():
        rounds = " / ".join(f"{x:.2f}" for x in row.get("cpu_rounds", []))
        rps = f"{row['rps']:.1f}" if row.get("rps") else ""
        lines.append(f"| {names[key]} | {row['cpu_ms']:.2f} | {row['server']:.2f} | {row['worker']:.2f} | "
                     f"{row['postgres']:.2f} | {row['redis']:.2f} | {rps} | {rounds} | {row.get('errors') or ''} |")
    floor = rows["floor"]["cpu_ms"]
    lines.append("")
    lines.append(f"The face costs {rows['face']['cpu_ms'] / floor:.2f}× the floor.")
    if "litellm" in rows:
        peer = rows["litellm"]
        lines.append(
            f"A quarter of LiteLLM's CPU per message is {peer['cpu_ms'] / 4:.2f} ms: the floor alone is "
            f"{floor / peer['cpu_ms']:.2f}× LiteLLM's, {4 * floor / peer['cpu_ms']:.1f}× the target. Three times "
            f"LiteLLM's {peer['rps']:.1f} req/s would take {3 * peer['rps'] * floor / 1000:.2f} of the "
            f"{meta['cpus']} cores for the floor alone.")
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
    try:
        urls = {"llm": stack.fake_llm("--delay-ms", "0")}
        stack.env["OPENAI_BASE_URL"] = urls["llm"]
        urls["litellm"] = run.start_litellm(stack, urls["llm"])
        stack.manage("migrate", "--noinput")
        demo = json.loads(stack.manage("seed_demo", "--json"))
        urls["bare"], bare = start_bare_server(stack)
        pids = {"bare": bare, "worker": start_floor_worker(stack)}
        backends = overrides_ab.PostgresBackends()
        for number in range(ROUNDS):
            rounds.append(one_round(stack, urls, pids, demo, backends))
            run.log(f"round {number + 1}: " + ", ".join(f"{k} {v['cpu_ms']:.2f} ms" for k, v in rounds[-1].items()))
    except Exception:
        print(stack.logs())
        raise
    finally:
        stack.stop()
    meta["load_after"] = " ".join(f"{x:.1f}" for x in os.getloadavg())
    meta["minutes"] = round((time.monotonic() - started) / 60, 1)
    rows = summarize(rounds)
    run.RESULTS.mkdir(parents=True, exist_ok=True)
    (run.RESULTS / "floor.json").write_text(json.dumps({"meta": meta, "rows": rows, "rounds": rounds}, indent=2))
    (run.RESULTS / "floor.md").write_text(render(rows, meta))
    print(render(rows, meta))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--part"]:
        part = {"queue": part_queue, "model": part_model, "writes": part_writes}[sys.argv[2]]
        print(json.dumps(part(json.loads(sys.argv[3]))))
    elif sys.argv[1:] == ["--render"]:
        saved = json.loads((BASE / "bench" / "results" / "floor.json").read_text())
        print(render(saved["rows"], saved["meta"]))
    else:
        main()

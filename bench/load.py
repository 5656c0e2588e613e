"""The load generator: a separate process that drives one scenario over loopback and prints JSON.

    python bench/load.py '<json spec>'

Spec kinds:
- ``http``: POST ``body`` to ``url`` (or to each of ``urls`` in turn) ``count`` times at
  ``concurrency`` (``idempotency``: a unique Idempotency-Key per request, ``repeat_every``: also
  resend every Nth request with its key).
  With ``slack_signing_secret``, each request is instead a distinct Slack ``message`` event
  (a DM from one of ``slack_users`` senders), signed as Slack signs; a resend is Slack's retry of
  the same event (same body, ``X-Slack-Retry-Num``), re-signed with a fresh timestamp; events are
  numbered from ``first_event`` (0), so two loads in one second can keep their events apart.
- ``ws_hold``: open ``connections`` websockets to ``url`` and hold them; then send ``messages``
  messages on ``message_sockets`` of them and time message→reply; reports connect/hold numbers.
Bounded by counts and a wall-clock ``timeout``; loopback only.
"""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import json
import statistics
import sys
import time
import uuid

import aiohttp


def summarize(latencies: list[float], duration: float, errors: dict, extra: dict | None = None) -> dict:
    ordered = sorted(latencies)

    def pct(p: float) -> float | None:
        if not ordered:
            return None
        return round(ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] * 1000, 2)

    return {
        "ok": len(ordered), "errors": errors, "seconds": round(duration, 3),
        "rps": round(len(ordered) / duration, 1) if duration else None,
        "p50_ms": pct(50), "p95_ms": pct(95), "p99_ms": pct(99),
        "mean_ms": round(statistics.fmean(ordered) * 1000, 2) if ordered else None,
        **(extra or {}),
    }


def slack_event(i: int, users: int) -> tuple[str, str]:
    """(dedupe key "channel:ts", body) of the i-th Slack DM event."""
    channel, ts = f"D{i % users:08d}", f"{int(time.time())}.{i:06d}"
    event = {"type": "message", "channel": channel, "channel_type": "im", "user": f"UBENCH{i % users:05d}",
             "text": f"benchmark hello {i}", "ts": ts}
    body = {"token": "bench", "team_id": "TBENCH", "api_app_id": "ABENCH", "type": "event_callback",
            "event_id": f"Ev{uuid.uuid4().hex[:12]}", "event_time": int(time.time()), "event": event}
    return f"{channel}:{ts}", json.dumps(body)


def slack_headers(secret: str, body: str) -> dict:
    timestamp = str(int(time.time()))
    digest = hmac.new(secret.encode(), f"v0:{timestamp}:{body}".encode(), hashlib.sha256).hexdigest()
    return {"X-Slack-Request-Timestamp": timestamp, "X-Slack-Signature": f"v0={digest}"}


async def run_http(spec: dict) -> dict:
    latencies: list[float] = []
    errors: dict[str, int] = {}
    warmup_errors: dict[str, int] = {}
    accepted: list[str] = []
    keys: list[str] = []
    queue: asyncio.Queue = asyncio.Queue()
    slack_secret = spec.get("slack_signing_secret")
    bodies: dict[str, str] = {}
    for i in range(spec["count"]):
        key = f"bench-{uuid.uuid4()}" if spec.get("idempotency") else None
        if slack_secret:
            key, bodies[key] = slack_event(spec.get("first_event", 0) + i, spec.get("slack_users", 50))
        queue.put_nowait((key, False))
        if key:
            keys.append(key)
            if spec.get("repeat_every") and i % spec["repeat_every"] == 0:
                queue.put_nowait((key, True))  # a retried delivery of the same message
    connector = aiohttp.TCPConnector(limit=spec["concurrency"] + 5, force_close=False)
    timeout = aiohttp.ClientTimeout(total=spec.get("request_timeout", 60))
    urls = spec.get("urls") or [spec["url"]]
    sent = itertools.count()
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        async def one_worker(queue: asyncio.Queue, record: bool):
            while not queue.empty():
                key, retry = queue.get_nowait()
                headers = {"Content-Type": "application/json", **spec.get("headers", {})}
                data = json.dumps(spec.get("body"))
                if slack_secret:
                    data = bodies[key]
                    headers.update(slack_headers(slack_secret, data))
                    if retry:
                        headers.update({"X-Slack-Retry-Num": "1", "X-Slack-Retry-Reason": "http_timeout"})
                elif key:
                    headers["Idempotency-Key"] = key
                started = time.perf_counter()
                try:
                    url = urls[next(sent) % len(urls)]
                    async with session.post(url, data=data, headers=headers) as resp:
                        raw = await resp.read()
                        if resp.status in spec.get("ok_status", [200]):
                            if record:
                                latencies.append(time.perf_counter() - started)
                                if spec.get("collect_ids"):
                                    accepted.append(json.loads(raw)["message_id"])
                        else:
                            failed = errors if record else warmup_errors
                            failed[str(resp.status)] = failed.get(str(resp.status), 0) + 1
                except Exception as exc:  # noqa: BLE001 - the bench counts every failure kind
                    failed = errors if record else warmup_errors
                    failed[type(exc).__name__] = failed.get(type(exc).__name__, 0) + 1

        # Warm-up at the run's concurrency, not timed or counted: new senders (Slack), the
        # database pool filling and preparing its statements, caches. Each warm-up request is a
        # distinct message of its own (its own key), never one of the counted ones.
        warmup: asyncio.Queue = asyncio.Queue()
        for j in range(spec.get("warmup", 0)):
            key = f"warmup-{uuid.uuid4()}" if spec.get("idempotency") else None
            if slack_secret:
                key, bodies[key] = slack_event(spec["count"] + j, spec.get("slack_users", 50))
            warmup.put_nowait((key, False))
        await asyncio.gather(*(one_worker(warmup, False) for _ in range(spec["concurrency"])))
        started = time.perf_counter()
        await asyncio.wait_for(asyncio.gather(*(one_worker(queue, True) for _ in range(spec["concurrency"]))),
                               spec["timeout"])
        duration = time.perf_counter() - started
    # Every repeat_every-th message (i = 0, r, 2r, …) is also resent.
    resent = (len(keys) - 1) // spec["repeat_every"] + 1 if spec.get("repeat_every") and keys else 0
    extra = {"sent": spec["count"] + resent,
             "warmup": spec.get("warmup", 0), "warmup_errors": warmup_errors}
    if keys:
        extra["keys"] = keys
    if spec.get("collect_ids"):
        extra["accepted_ids"] = accepted
    return summarize(latencies, duration, errors, extra)


async def run_ws_hold(spec: dict) -> dict:
    import websockets

    sockets = []
    errors: dict[str, int] = {}
    semaphore = asyncio.Semaphore(spec.get("connect_concurrency", 50))

    async def connect():
        async with semaphore:
            try:
                ws = await websockets.connect(spec["url"], open_timeout=30, ping_interval=None, max_queue=64)
                sockets.append(ws)
            except Exception as exc:  # noqa: BLE001
                errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1

    started = time.perf_counter()
    await asyncio.wait_for(asyncio.gather(*(connect() for _ in range(spec["connections"]))), spec["timeout"])
    connect_seconds = time.perf_counter() - started
    held = len(sockets)
    # Report, then wait for the orchestrator to read Daphne's memory while everything is connected.
    print(json.dumps({"event": "held", "held": held}), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    latencies: list[float] = []
    reply_errors: dict[str, int] = {}

    async def converse(ws, n: int):
        for i in range(n):
            started = time.perf_counter()
            text = spec.get("text", "hello")
            await ws.send(json.dumps({"type": "message", "message": f"{text} {i}", "client_id": str(uuid.uuid4())}))
            while True:
                frame = json.loads(await asyncio.wait_for(ws.recv(), spec.get("reply_timeout", 30)))
                if frame["type"] == "reply":
                    latencies.append(time.perf_counter() - started)
                    break
                if frame["type"] == "error":
                    reply_errors[frame["code"]] = reply_errors.get(frame["code"], 0) + 1
                    break

    # Chat with ``keep_for_chat`` connected: close the rest first.
    keep = spec.get("keep_for_chat", held)
    await asyncio.gather(*(ws.close() for ws in sockets[keep:]), return_exceptions=True)
    sockets = sockets[:keep]
    talkers = sockets[: spec["message_sockets"]]
    per_socket = max(1, spec["messages"] // max(1, len(talkers)))
    chat_started = time.perf_counter()
    results = await asyncio.gather(*(converse(ws, per_socket) for ws in talkers), return_exceptions=True)
    for result in results:
        if isinstance(result, Exception):
            reply_errors[type(result).__name__] = reply_errors.get(type(result).__name__, 0) + 1
    chat_seconds = time.perf_counter() - chat_started
    await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)
    return summarize(latencies, chat_seconds, reply_errors,
                     {"connections_requested": spec["connections"], "connections_held": held,
                      "connect_errors": errors, "connect_seconds": round(connect_seconds, 2),
                      "connected_while_chatting": len(sockets)})


def main() -> None:
    spec = json.loads(sys.argv[1])
    runner = {"http": run_http, "ws_hold": run_ws_hold}[spec["kind"]]
    result = asyncio.run(runner(spec))
    print(json.dumps({"event": "result", **result}), flush=True)


if __name__ == "__main__":
    main()

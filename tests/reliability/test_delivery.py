"""An accepted message is answered exactly once: faults between the answer and its delivery.

Each test breaks one thing at the worst moment (the worker dies mid-delivery, Redis goes away
while a reply is published, a run outlives its lease, a message waits its turn behind a slow one,
Redis fails as a model call is settled) and counts what reached the platform or the sender.
"""
from __future__ import annotations

import json
import signal
import time
import urllib.request

import pytest
import redis

from .conftest import key_with_a_daily_budget, post_message, slack_deliver, slack_message_event, sql

pytestmark = [pytest.mark.services, pytest.mark.e2e]


def wait_for(what: str, probe, timeout: float = 60):
    """Poll ``probe()`` until it returns something truthy (returned), or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        if found := probe():
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def row(gw, query: str, *params):
    rows = sql(gw, query, *params)
    return rows[0] if rows else None


def inbound_status(gw, message_id: str) -> str | None:
    found = row(gw, "SELECT status FROM conversations_message WHERE id::text = %s", message_id)
    return found[0] if found else None


def reply_of(gw, message_id: str):
    """(status, error_code, attempts) of the agent reply to ``message_id``, or None."""
    return row(gw, "SELECT status, error_code, attempts FROM conversations_message "
                   "WHERE direction = 'out' AND reply_to_id::text = %s", message_id)


def slack_inbound_id(gw, ts: str) -> str:
    return wait_for("the Slack message stored", lambda: row(
        gw, "SELECT id::text FROM conversations_message WHERE direction = 'in' AND external_id = %s",
        f"C0REL:{ts}"))[0]


def slack_posts(gw, thread_ts: str) -> list[dict]:
    return [m for m in gw.platforms.state.slack_messages if m["thread_ts"] == thread_ts]


def llm_requests(gw) -> int:
    with urllib.request.urlopen(gw.llm_url.removesuffix("/v1") + "/_fake/stats", timeout=5) as response:
        return json.load(response)["requests"]


def restart_workers(gw) -> None:
    """Once Redis is back, the workers are replaced, as a supervisor would: a Celery worker may exit
    on losing its broker (kombu's "Unrecoverable error" on reconnecting), or still be on its way out."""
    for worker in gw.workers:
        worker.kill()
    gw.workers = [gw.stack.worker()]


def test_worker_killed_between_reply_write_and_delivery_sends_it_once(gw, ledger):
    """Must hold: the worker dies (SIGKILL) after storing a reply and while the platform has not
    yet taken it. A later worker sends that reply exactly once, and the conversation's next
    message is answered meanwhile: a stored reply never holds up the conversation."""
    first = slack_message_event("first, then the worker dies")
    thread = first["event"]["ts"]
    gw.platforms.script(slack_hold=True)  # Slack is slow to take the reply: the worker is mid-delivery
    try:
        assert slack_deliver(gw, first)[0] == 200
        ledger.sent += 1
        first_id = slack_inbound_id(gw, thread)
        wait_for("the reply stored and its delivery under way", lambda: gw.platforms.state.slack_held >= 1
                 and (reply_of(gw, first_id) or ("",))[0] == "pending")
        dropped = gw.platforms.state.slack_dropped
        for worker in gw.workers:
            worker.kill()
        ledger.faults += 1
        gw.workers = []
        wait_for("Slack to drop the dead worker's request",
                 lambda: gw.platforms.state.slack_dropped > dropped, timeout=10)
    finally:
        gw.platforms.script(slack_hold=False)
    second = slack_message_event("second, in the same thread")
    second["event"]["thread_ts"] = thread
    assert slack_deliver(gw, second)[0] == 200
    ledger.sent += 1
    second_id = slack_inbound_id(gw, second["event"]["ts"])
    gw.workers = [gw.stack.worker()]
    try:
        for message_id in (first_id, second_id):
            wait_for("the reply sent", lambda m=message_id: (reply_of(gw, m) or ("",))[0] == "sent", timeout=45)
    finally:
        posts = slack_posts(gw, thread)
        texts = [post["text"] for post in posts]
        expected = ["Echo: first, then the worker dies", "Echo: second, in the same thread"]
        ledger.answered += len(set(texts) & set(expected))
        ledger.duplicates += len(texts) - len(set(texts))
        ledger.lost += len(set(expected) - set(texts))
    assert sorted(texts) == expected
    assert [inbound_status(gw, first_id), inbound_status(gw, second_id)] == ["answered", "answered"]


def test_redis_down_while_a_reply_is_published_fails_the_delivery_not_the_message(gw, ledger):
    """Must hold: Redis (the channel layer an API or web chat reply is published on) goes away
    after the model answered. That is a delivery failure: the answered message stays answered,
    the reply is kept and retried, and goes out once Redis is back. (The request waited for its
    reply, so its server's inbox is where the reply goes; it gave up before the model answered.)"""
    before = llm_requests(gw)
    status, body, _ = post_message(gw, {"message": "Redis breaks as I answer [[delay:4]]", "wait": 1})
    ledger.sent += 1
    assert status == 504 and body["error"]["code"] == "reply_timeout", body
    message_id = body["message_id"]
    wait_for("the model call under way", lambda: llm_requests(gw) > before, timeout=30)
    port = gw.redis.port
    gw.redis.kill()
    ledger.faults += 1
    try:
        wait_for("the reply stored and its delivery tried", lambda: inbound_status(gw, message_id) == "failed"
                 or (reply_of(gw, message_id) or ("", ""))[1] != "", timeout=45)
    finally:
        gw.redis = gw.stack.redis(port=port)
        restart_workers(gw)
    try:
        wait_for("the reply sent after Redis came back",
                 lambda: (reply_of(gw, message_id) or ("",))[0] == "sent" or inbound_status(gw, message_id) == "failed",
                 timeout=60)
    finally:
        answered = inbound_status(gw, message_id) == "answered" and (reply_of(gw, message_id) or ("",))[0] == "sent"
        ledger.answered += answered
        ledger.lost += not answered
    assert inbound_status(gw, message_id) == "answered"
    assert sql(gw, "SELECT status FROM conversations_message WHERE reply_to_id::text = %s", message_id) == [("sent",)]


def test_run_longer_than_its_lease_runs_once_and_is_delivered_once(gw, ledger):
    """Must hold: a model call that takes longer than the claim's lease (4 s here) does not let a
    second run claim the message: the model is asked once and Slack gets one reply."""
    before = llm_requests(gw)
    event = slack_message_event("a long think [[delay:9]]")
    thread = event["event"]["ts"]
    assert slack_deliver(gw, event)[0] == 200
    ledger.sent += 1
    message_id = slack_inbound_id(gw, thread)
    ledger.faults += 1
    try:
        wait_for("the reply sent", lambda: (reply_of(gw, message_id) or ("",))[0] == "sent", timeout=60)
    finally:
        posts = slack_posts(gw, thread)
        ledger.answered += bool(posts)
        ledger.duplicates += max(0, len(posts) - 1)
        ledger.lost += not posts
    (attempts,) = row(gw, "SELECT attempts FROM conversations_message WHERE id::text = %s", message_id)
    assert (attempts, llm_requests(gw) - before) == (1, 1)  # claimed once, the model asked once
    assert [post["text"] for post in slack_posts(gw, thread)] == ["Echo: a long think"]


def live_tasks(gw, message_id: str) -> set[str]:
    """Ids of the agent-run tasks for ``message_id`` the broker holds (queued, or taken by a
    worker and not yet acknowledged: a countdown retry waits there)."""
    client = redis.Redis(port=gw.redis.port, socket_timeout=5)
    raw = client.lrange("gateway", 0, -1) + [json.dumps(json.loads(v)[0]).encode() for v in client.hvals("unacked")]
    ids = set()
    for item in raw:
        headers = json.loads(item).get("headers", {})
        if headers.get("task") == "agents.run_agent" and message_id in str(headers.get("argsrepr")):
            ids.add(headers["id"])
    return ids


def test_a_message_waiting_its_turn_has_one_live_task(gw, ledger):
    """Must hold: messages queued behind a slow one of their conversation stay accepted while they
    wait, and the periodic recovery (every second here) must not start a new task chain for them
    each time: one waiting message has at most one live task."""
    status, body, _ = post_message(gw, {"message": "slow first [[delay:8]]"})
    assert status == 202, body
    conversation, first = body["conversation_id"], body["message_id"]
    waiting = []
    for i in range(2):
        status, body, _ = post_message(gw, {"message": f"waits its turn {i}", "conversation_id": conversation})
        assert status == 202, body
        waiting.append(body["message_id"])
    ledger.sent += 3
    seen: dict[str, set[str]] = {m: set() for m in waiting}
    most_at_once = 0
    deadline = time.monotonic() + 60
    while inbound_status(gw, first) != "answered" and time.monotonic() < deadline:
        for message_id in waiting:
            live = live_tasks(gw, message_id)
            seen[message_id] |= live
            most_at_once = max(most_at_once, len(live))
        time.sleep(0.2)
    ledger.faults += 1
    for message_id in waiting:
        wait_for("the waiting message answered", lambda m=message_id: inbound_status(gw, m) == "answered")
    counts = [len(sql(gw, "SELECT 1 FROM conversations_message WHERE reply_to_id::text = %s", m))
              for m in (first, *waiting)]
    ledger.answered += sum(1 for n in counts if n)
    ledger.duplicates += sum(max(0, n - 1) for n in counts)
    ledger.lost += sum(1 for n in counts if not n)
    assert counts == [1, 1, 1]
    assert most_at_once <= 1, seen
    assert all(len(ids) <= 1 for ids in seen.values()), seen




def test_budget_settle_failing_on_redis_still_counts_the_usage(gw, ledger):
    """Must hold: Redis stops answering just as a model call's usage is settled (the settle times
    out), then answers again with its data. The call's usage still reaches the budget counter (from
    the database's record of the call), so a key whose daily quota that call used up is refused
    afterwards, also once the call's reservation has expired."""
    key = key_with_a_daily_budget(gw, "settle-fault", tokens=1)
    auth = {"Authorization": f"Bearer {key}"}
    before = llm_requests(gw)
    status, body, _ = post_message(gw, {"message": "spend my quota [[delay:2]]"}, headers=auth)
    ledger.sent += 1
    assert status == 202, body
    message_id = body["message_id"]
    wait_for("the model call under way", lambda: llm_requests(gw) > before, timeout=30)
    gw.redis.popen.send_signal(signal.SIGSTOP)  # Redis stalls: the settle times out, no data is lost
    ledger.faults += 1
    try:
        wait_for("the model call logged", lambda: sql(
            gw, "SELECT 1 FROM logs_llmcall WHERE message_id::text = %s AND status = 'ok'", message_id), timeout=45)
    finally:
        gw.redis.popen.send_signal(signal.SIGCONT)
    wait_for("the message answered", lambda: inbound_status(gw, message_id) in ("answered", "failed"))
    ledger.answered += inbound_status(gw, message_id) == "answered"
    (used,) = row(gw, "SELECT total_tokens FROM logs_llmcall WHERE message_id::text = %s", message_id)
    assert used >= 1
    # Wait until the call's reservation is settled or expired (15 s here): a counter that still
    # holds it refuses anyway, and would hide a usage that never reached it.
    client = redis.Redis(port=gw.redis.port, socket_timeout=5)
    counters = "gw:q:tokens:*:api_key:*"

    def reservations_open() -> int:
        return sum(len(client.zrangebyscore(k, time.time(), "+inf")) for k in client.keys(counters + ":res"))
    wait_for("the call's reservation settled or expired", lambda: reservations_open() == 0, timeout=40)
    status, body, _ = post_message(gw, {"message": "one more, over quota"}, headers=auth)
    ledger.sent += 1
    assert (status, body.get("error", {}).get("code")) == (429, "quota_exceeded"), body

"""The embedded default (`make run`: SQLite, agent runs in the server process, no Celery) recovers
what a restart interrupted, as the services stack's periodic recovery does."""
from __future__ import annotations

import asyncio
import json
import signal
import sqlite3

import pytest
import websockets

from devtools.stack import Stack, base_env, free_port, http, visitor_token
from tests.helpers import wait_until

pytestmark = pytest.mark.e2e


def statuses(db_path, ids: list[str]) -> dict[str, str]:
    with sqlite3.connect(db_path, timeout=10) as conn:
        rows = conn.execute(
            f"SELECT id, status FROM conversations_message WHERE id IN ({','.join('?' * len(ids))})",
            [i.replace("-", "") for i in ids]).fetchall()
    return {i: dict(rows).get(i.replace("-", "")) for i in ids}


def replies(db_path, ids: list[str]) -> dict[str, int]:
    with sqlite3.connect(db_path, timeout=10) as conn:
        rows = conn.execute(
            "SELECT reply_to_id, count(*) FROM conversations_message WHERE direction = 'out' GROUP BY 1").fetchall()
    counts = dict(rows)
    return {i: counts.get(i.replace("-", ""), 0) for i in ids}


def restart_then_every_message_is_answered_once(stack, db_path, ids: list[str], ledger) -> None:
    """Start the server again; every message is answered, exactly once. (On a new port: the old one,
    free for a moment, may meanwhile be taken by another test worker's free_port().)"""
    stack.daphne()
    wait_until(lambda: all(s in ("answered", "failed") for s in statuses(db_path, ids).values()), timeout=60,
               interval=0.25)
    counts = replies(db_path, ids)
    ledger.answered += sum(1 for n in counts.values() if n)
    ledger.duplicates += sum(max(0, n - 1) for n in counts.values())
    ledger.lost += sum(1 for n in counts.values() if not n)
    assert set(statuses(db_path, ids).values()) == {"answered"}, statuses(db_path, ids)
    assert set(counts.values()) == {1}, counts


@pytest.mark.parametrize("stop", ["kill", "stop", "stop, model gone"])
def test_embedded_restart_mid_run_answers_every_accepted_message(tmp_path, ledger, stop):
    """Must hold: the server is killed (SIGKILL), or stopped (SIGTERM, as `make run` stops it on
    Ctrl-C), while two messages are at the model and two wait for a thread; once it starts again,
    every accepted message is answered, exactly once, and none failed.

    On SIGTERM the runs at the model finish on the way out and the queued ones stay ``accepted``
    (an executor's threads used to run them while the interpreter exited, where a run can no longer
    publish: they failed). If the model goes away as well (it did under `make run`), the runs at it
    give their claim back instead of failing their message."""
    db_path = tmp_path / "gateway.sqlite3"
    stack = Stack(base_env(DATABASE_URL=f"sqlite:///{db_path}",
                           GATEWAY_CONFIG_GENERATION_DIR=str(tmp_path / "config-generation"),
                           GATEWAY_AGENT_LEASE_SECONDS="4", GATEWAY_REQUEUE_INTERVAL_SECONDS="1",
                           GATEWAY_REQUEUE_ACCEPTED_AFTER_SECONDS="2", GATEWAY_EMBEDDED_WORKERS="2",
                           # The model's failure reaches the run after the server's main thread ended.
                           GATEWAY_LLM_RETRIES="2", GATEWAY_LLM_BACKOFF_BASE_SECONDS="1"))
    try:
        model_port = free_port()
        stack.env["OPENAI_BASE_URL"] = stack.fake_llm("--port", str(model_port))
        model = stack.processes[-1]
        stack.manage("migrate", "--noinput")
        key = json.loads(stack.manage("seed_demo", "--json"))["api_keys"]["customer"]
        url = stack.daphne()
        server = stack.processes[-1]
        ids = []
        for i in range(4):  # two run (two agent threads), two wait for a free thread
            status, body, _ = http("POST", f"{url}/api/v1/messages", {"message": f"in flight {i} [[delay:5]]"},
                                   {"Authorization": f"Bearer {key}"})
            assert status == 202, body
            ids.append(body["message_id"])
        ledger.sent += len(ids)
        assert wait_until(lambda: list(statuses(db_path, ids).values()).count("processing") == 2, timeout=30), \
            "the runs did not start"
        ledger.faults += 1
        if stop == "kill":
            server.kill()
        else:
            server.popen.send_signal(signal.SIGTERM)
            if stop == "stop, model gone":
                server.wait_for_closed(f"{url}/healthz")
                model.kill()
            assert server.popen.wait(60) == 0, server.log()  # exited by itself, runs in flight done
            left = statuses(db_path, ids)
            assert "failed" not in left.values(), left
            in_flight = "accepted" if stop == "stop, model gone" else "answered"
            assert sorted(left.values()) == sorted(["accepted", "accepted", in_flight, in_flight]), left
            if stop == "stop, model gone":
                assert "interrupted by the process stopping" in server.log()
                stack.fake_llm("--port", str(model_port))
        restart_then_every_message_is_answered_once(stack, db_path, ids, ledger)
    except Exception:
        print(stack.logs())
        raise
    finally:
        stack.stop()


def test_embedded_stop_while_a_web_chat_answer_streams_fails_nothing(tmp_path, ledger):
    """Must hold: SIGTERM while a web chat answer is streaming and the visitor's next message waits
    its turn. The streaming run finishes without its listener (the pieces it can no longer publish
    are dropped), nothing is failed, and the next start answers the rest, in order, each once.
    (A review's Ctrl-C failed the streaming message: publishing was refused before the stop showed.)"""
    db_path = tmp_path / "gateway.sqlite3"
    stack = Stack(base_env(DATABASE_URL=f"sqlite:///{db_path}",
                           GATEWAY_CONFIG_GENERATION_DIR=str(tmp_path / "config-generation"),
                           GATEWAY_AGENT_LEASE_SECONDS="4", GATEWAY_REQUEUE_INTERVAL_SECONDS="1",
                           GATEWAY_REQUEUE_ACCEPTED_AFTER_SECONDS="2"))
    try:
        stack.env["OPENAI_BASE_URL"] = stack.fake_llm()
        stack.manage("migrate", "--noinput")
        slug = json.loads(stack.manage("seed_demo", "--json"))["channels"]["webchat"]["slug"]
        url = stack.daphne()
        server = stack.processes[-1]
        ws_url = url.replace("http", "ws") + f"/ws/chat/{slug}/?visitor={visitor_token(url, slug)}"

        async def chat_until_the_stop() -> list[str]:
            ids = []
            async with websockets.connect(ws_url) as ws:
                for i in range(2):
                    await ws.send(json.dumps({"type": "message", "client_id": f"c{i}",
                                              "message": f"[[slow:0.4]] answer {i} comes in many small pieces"}))
                while True:
                    frame = json.loads(await asyncio.wait_for(ws.recv(), 30))
                    if frame["type"] == "ack":
                        ids.append(frame["message_id"])
                    elif frame["type"] == "delta" and len(ids) == 2:
                        server.popen.send_signal(signal.SIGTERM)  # the first answer is streaming
                        return ids
                    else:
                        assert frame["type"] != "error", frame

        ids = asyncio.run(chat_until_the_stop())
        ledger.sent += len(ids)
        ledger.faults += 1
        assert server.popen.wait(60) == 0, server.log()
        assert statuses(db_path, ids) == {ids[0]: "answered", ids[1]: "accepted"}, server.log()
        restart_then_every_message_is_answered_once(stack, db_path, ids, ledger)
        with sqlite3.connect(db_path, timeout=10) as conn:
            sent = [row[0] for row in conn.execute(
                "SELECT reply_to_id FROM conversations_message WHERE direction = 'out' AND status = 'sent' "
                "ORDER BY updated_at")]
        assert sent == [i.replace("-", "") for i in ids]  # the first's reply went out first
    except Exception:
        print(stack.logs())
        raise
    finally:
        stack.stop()

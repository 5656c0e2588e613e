"""Duplicate and retried deliveries: every message is answered exactly once."""
from __future__ import annotations

import asyncio
import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
import websockets

from devtools.stack import visitor_token
from tests.connectors.connector_helpers import wecom_callback, wecom_text_xml

from .conftest import (
    crm_deliver,
    post_message,
    replies_per_message,
    sql,
    wait_for_quiet_broker,
    wait_until_answered,
    wecom_deliver,
    wecom_demo_crypto,
)

pytestmark = [pytest.mark.services, pytest.mark.e2e]


def test_api_retries_with_one_idempotency_key_are_one_message_and_one_reply(gw, ledger):
    """Must hold: a client retrying with the same Idempotency-Key (after a timeout, say) gets the same
    message id and the same reply each time; the agent runs once."""
    key = f"retry-{uuid.uuid4()}"
    answers = []
    for _ in range(4):
        status, body, _ = post_message(gw, {"message": "pay invoice 7", "wait": 30}, {"Idempotency-Key": key})
        ledger.sent += 1
        ledger.errors_500 += status >= 500
        answers.append((status, body))
    assert {status for status, _ in answers} == {200}
    assert len({body["message_id"] for _, body in answers}) == 1
    assert len({body["reply"]["message_id"] for _, body in answers}) == 1
    counts = replies_per_message(gw, [answers[0][1]["message_id"]])
    ledger.record(counts)
    assert list(counts.values()) == [1]
    calls = sql(gw, "SELECT count(*) FROM logs_llmcall WHERE message_id::text = %s", answers[0][1]["message_id"])
    assert calls[0][0] == 1


def test_concurrent_identical_requests_race_to_one_message(gw, ledger):
    """Must hold: 20 identical requests at once (a client's retry storm) make one inbound message
    and one reply; every caller gets that message id and no caller gets a 500."""
    keys = [f"race-{uuid.uuid4()}" for _ in range(3)]

    def deliver(i):
        return post_message(gw, {"message": f"race {i % 3}", "wait": 30}, {"Idempotency-Key": keys[i % 3]})

    with ThreadPoolExecutor(20) as pool:
        results = list(pool.map(deliver, range(30)))
    ledger.sent += len(results)
    ledger.errors_500 += sum(status >= 500 for status, _b, _h in results)
    assert {status for status, _b, _h in results} == {200}, [b for s, b, _ in results if s != 200][:3]
    message_ids = {body["message_id"] for _s, body, _h in results}
    assert len(message_ids) == 3
    counts = replies_per_message(gw, message_ids)
    ledger.record(counts)
    assert set(counts.values()) == {1}


def delivered(gw, matching, platform: str, timeout: float = 20) -> list:
    """What ``matching()`` finds on the fake platform once something arrived and the broker went
    quiet: no task is left queued or running that could post a duplicate."""
    deadline = time.monotonic() + timeout
    while not matching():
        assert time.monotonic() < deadline, f"the reply never reached {platform}"
        time.sleep(0.2)
    wait_for_quiet_broker(gw)
    return matching()


def deliver_repeatedly(deliver, times: int, *, at_once: bool) -> list[int]:
    """HTTP statuses of ``times`` identical deliveries, one after another or all at once."""
    if not at_once:
        return [deliver()[0] for _ in range(times)]
    with ThreadPoolExecutor(times) as pool:
        return [status for status, _body in pool.map(lambda _: deliver(), range(times))]


def answered_once(gw, ledger, external_id: str) -> str:
    """The one inbound message stored under ``external_id``, once answered; counts it in the ledger."""
    rows = sql(gw, "SELECT id::text FROM conversations_message WHERE direction='in' AND external_id = %s", external_id)
    assert len(rows) == 1, rows
    message_id = rows[0][0]
    counts = wait_until_answered(gw, [message_id])
    ledger.answered += bool(counts[message_id])
    ledger.lost += not counts[message_id]
    ledger.duplicates += max(0, counts[message_id] - 1)
    assert counts[message_id] == 1
    calls = sql(gw, "SELECT count(*) FROM logs_llmcall WHERE message_id::text = %s", message_id)
    assert calls[0][0] == 1
    return message_id


async def _chat(url: str, frames: list[dict], wait_for_replies: int, timeout: float = 30) -> list[dict]:
    received: list[dict] = []
    async with websockets.connect(url) as ws:
        for frame in frames:
            await ws.send(json.dumps(frame))
        replies = 0
        while replies < wait_for_replies:
            received.append(json.loads(await asyncio.wait_for(ws.recv(), timeout)))
            replies += received[-1]["type"] in ("reply", "error")
        # Anything else that would arrive (a duplicate reply) arrives now.
        try:
            while True:
                received.append(json.loads(await asyncio.wait_for(ws.recv(), 1.0)))
        except TimeoutError:
            pass
    return received


def test_websocket_resends_are_acknowledged_and_answered_once(gw, ledger):
    """Must hold: a browser resending the same client_id (flaky network) — on the same socket, and
    again after reconnecting — gets acks for one message id and exactly one reply."""
    slug = gw.demo["channels"]["webchat"]["slug"]
    token = visitor_token(gw.url, slug)
    url = gw.url.replace("http", "ws") + f"/ws/chat/{slug}/?visitor={token}"
    frame = {"type": "message", "message": "resend me", "client_id": f"c-{uuid.uuid4()}"}
    first = asyncio.run(_chat(url, [frame, frame, frame], wait_for_replies=1))
    ledger.sent += 3
    acks = [f for f in first if f["type"] == "ack"]
    assert len(acks) == 3 and len({a["message_id"] for a in acks}) == 1
    assert [f["type"] for f in first].count("reply") == 1
    message_id = acks[0]["message_id"]
    conversation = acks[0]["conversation_id"]
    again = asyncio.run(_chat(url + f"&conversation={conversation}", [frame], wait_for_replies=0))
    ledger.sent += 1
    ack = next(f for f in again if f["type"] == "ack")  # a returning tab may get a history frame first
    assert ack["duplicate"] is True and ack["message_id"] == message_id
    assert not [f for f in again if f["type"] == "reply"]
    counts = wait_until_answered(gw, [message_id])
    ledger.answered += 1
    ledger.duplicates += max(0, counts[message_id] - 1)
    assert counts[message_id] == 1


def test_slack_retries_and_mention_pairs_are_answered_once(gw, ledger):
    """Must hold: Slack's retries of one event (X-Slack-Retry-Num 1, 2, sent while the first is in
    flight) and the app_mention Slack sends alongside the message are one inbound message and one
    chat.postMessage in the thread."""
    from .conftest import slack_deliver, slack_message_event

    event = slack_message_event("hello from slack [[delay:0.5]]")
    mention = json.loads(json.dumps(event))
    mention["event"]["type"] = "app_mention"
    mention["event_id"] = "EvMENTION" + event["event_id"][-4:]
    deliveries = [(event, None), (event, 1), (event, 2), (mention, None)]
    with ThreadPoolExecutor(4) as pool:
        statuses = list(pool.map(lambda d: slack_deliver(gw, d[0], retry_num=d[1])[0], deliveries))
    ledger.sent += len(deliveries)
    ledger.errors_500 += sum(s >= 500 for s in statuses)
    assert set(statuses) == {200}, statuses
    ts = event["event"]["ts"]
    rows = sql(gw, "SELECT id::text FROM conversations_message WHERE direction='in' AND external_id = %s",
               f"C0REL:{ts}")
    assert len(rows) == 1
    counts = wait_until_answered(gw, [rows[0][0]])
    posts = delivered(gw, lambda: [m for m in gw.platforms.state.slack_messages if m["thread_ts"] == ts], "Slack")
    ledger.answered += 1
    ledger.duplicates += max(0, len(posts) - 1) + max(0, counts[rows[0][0]] - 1)
    assert len(posts) == 1 and counts[rows[0][0]] == 1
    assert posts[0]["text"] == "Echo: hello from slack"


@pytest.mark.parametrize("at_once", [False, True], ids=["in_turn", "at_once"])
def test_wecom_repeats_of_one_callback_are_answered_once(gw, ledger, at_once):
    """Must hold: WeCom re-sending one callback (same MsgId, it got no answer within 5 s) three more
    times — one after another, or all at once — is one inbound message, one model call and one
    message/send to the user."""
    user, msg_id = f"wecom-{uuid.uuid4().hex[:8]}", str(uuid.uuid4().int % 10**19)
    wecom = gw.demo["channels"]["wecom"]
    callback = wecom_callback(wecom_text_xml(user=user, text="退款进度 [[delay:0.5]]", msg_id=msg_id,
                                             corp_id=wecom["corp_id"], agent_id=wecom["agent_id"]),
                              crypto=wecom_demo_crypto(gw))
    statuses = deliver_repeatedly(lambda: wecom_deliver(gw, callback), 4, at_once=at_once)
    ledger.sent += len(statuses)
    ledger.errors_500 += sum(s >= 500 for s in statuses)
    assert statuses == [200] * 4, statuses
    answered_once(gw, ledger, msg_id)
    sends = delivered(gw, lambda: [m for m in gw.platforms.state.wecom_messages if m["touser"] == user], "WeCom")
    ledger.duplicates += max(0, len(sends) - 1)
    assert len(sends) == 1
    assert sends[0]["text"]["content"] == "Echo: 退款进度"


@pytest.mark.parametrize("at_once", [False, True], ids=["in_turn", "at_once"])
def test_crm_redeliveries_of_one_event_are_answered_once(gw, ledger, at_once):
    """Must hold: a CRM delivering one event (same event id) four times — one after another, or all at
    once — is one inbound message, one model call and one signed callback with the reply."""
    event_id = f"evt-{uuid.uuid4()}"
    event = {"id": event_id, "user_id": f"contact-{uuid.uuid4().hex[:8]}", "message": "where is my order [[delay:0.5]]",
             "timestamp": int(time.time())}
    statuses = deliver_repeatedly(lambda: crm_deliver(gw, event), 4, at_once=at_once)
    ledger.sent += len(statuses)
    ledger.errors_500 += sum(s >= 500 for s in statuses)
    assert statuses == [202] * 4, statuses
    answered_once(gw, ledger, event_id)
    callbacks = delivered(gw, lambda: [json.loads(c["body"]) for c in gw.platforms.state.crm_callbacks
                                   if json.loads(c["body"])["reply_to"] == event_id], "the CRM")
    ledger.duplicates += max(0, len(callbacks) - 1)
    assert len(callbacks) == 1
    assert callbacks[0]["message"] == "Echo: where is my order" and callbacks[0]["user_id"] == event["user_id"]

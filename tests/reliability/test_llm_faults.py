"""The model provider misbehaves: slow, erroring, rate-limiting, truncating.

Users get a reply or a clear error (never silence, never a 500), and every attempt is logged
as an LLMCall row.
"""
from __future__ import annotations

import pytest

from .conftest import post_message, sql

pytestmark = [pytest.mark.services, pytest.mark.e2e]

FAULTS = [
    ("slow [[delay:1.5]]", {200}),
    ("boom [[fail:500]]", {502}),
    ("overloaded [[fail:503]]", {502}),
    ("slow down [[fail:429]]", {502}),
    ("cut short [[truncate]]", {200, 502}),
]


@pytest.mark.parametrize(("text", "allowed"), FAULTS, ids=[f[0].split("[[")[1].rstrip("]") for f in FAULTS])
def test_provider_fault_gives_a_reply_or_a_clear_error_and_is_logged(gw, ledger, text, allowed):
    """Must hold: a reply (200) or agent_failed (502) with the gateway's error shape; the message
    ends answered or failed; each model attempt has an LLMCall row."""
    status, body, _ = post_message(gw, {"message": text, "wait": 30})
    ledger.faults += 1
    ledger.sent += 1
    ledger.errors_500 += status == 500
    assert status in allowed, body
    if status == 200:
        ledger.answered += 1
        assert body["reply"]["message"]
    else:
        assert body["error"]["code"] == "agent_failed" and body["error"]["message"]
    (state,), = sql(gw, "SELECT status FROM conversations_message WHERE id::text = %s", body["message_id"])
    assert state == ("answered" if status == 200 else "failed")
    calls = sql(gw, "SELECT status FROM logs_llmcall WHERE message_id::text = %s", body["message_id"])
    assert calls, "every model attempt is logged"
    if status != 200:
        assert any(s == "error" for (s,) in calls)


def test_wait_shorter_than_the_model_is_a_504_and_the_reply_still_lands(gw, ledger):
    """Must hold: the API waiter gives up with 504 reply_timeout; the reply is stored anyway."""
    status, body, _ = post_message(gw, {"message": "take your time [[delay:2]]", "wait": 0.5})
    ledger.faults += 1
    ledger.sent += 1
    assert status == 504 and body["error"]["code"] == "reply_timeout", body
    from .conftest import wait_until_answered

    counts = wait_until_answered(gw, [body["message_id"]], timeout=30)
    ledger.answered += counts[body["message_id"]] > 0
    ledger.lost += not counts[body["message_id"]]
    assert counts[body["message_id"]] == 1

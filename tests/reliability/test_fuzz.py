"""Bad input, generated: every endpoint and the websocket answer 4xx (or 2xx), never 500, never hang.

Hypothesis drives raw HTTP bodies, headers and websocket frames at the live Daphne; schemathesis
drives every operation of /api/v1/schema. A hang shows up as a client timeout, which fails the test.
"""
from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
import uuid

import pytest
import schemathesis
import websockets
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devtools.stack import visitor_token

pytestmark = [pytest.mark.services, pytest.mark.e2e]

FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
CLIENT_TIMEOUT_SECONDS = 15

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=50),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)
message_bodies = st.fixed_dictionaries(
    {},
    optional={
        "message": json_values | st.text(max_size=300),
        "conversation_id": json_values | st.uuids().map(str) | st.text(max_size=40),
        "wait": st.one_of(st.integers(-5, 3), st.floats(-1, 3, allow_nan=False), json_values),
        "metadata": json_values,
    },
) | json_values


def raw_request(method: str, url: str, data: bytes | None, headers: dict) -> tuple[int, bytes]:
    """The status code and body (errors included). A timeout propagates: a hang fails the test."""
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=CLIENT_TIMEOUT_SECONDS) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def check(ledger, status: int, body: bytes = b"") -> None:
    """No 5xx, but for the one a valid request may get: a ``wait`` that ran out before the reply
    (504 reply_timeout; the message is accepted and still answered). Right after the fault tests a
    recovering worker can take longer than the capped wait."""
    ledger.sent += 1
    if status == 504 and _error_code(body) == "reply_timeout":
        return
    ledger.errors_500 += status >= 500
    assert status < 500, body[:500]


def _error_code(body: bytes) -> str | None:
    try:
        return json.loads(body)["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return None


@FUZZ
@given(body=message_bodies)
def test_messages_api_json_bodies(gw, ledger, body):
    """Must hold: any JSON body to POST /api/v1/messages is a 2xx or a 4xx, with the wait capped."""
    if isinstance(body, dict) and isinstance(body.get("wait"), int | float):
        body["wait"] = min(body["wait"], 3)
    status, answer = raw_request("POST", f"{gw.url}/api/v1/messages", json.dumps(body).encode(),
                         {**gw.auth, "Content-Type": "application/json"})
    check(ledger, status, answer)


@FUZZ
@given(raw=st.binary(max_size=2000), content_type=st.sampled_from(
    ["application/json", "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
     "application/xml", "", "application/json; charset=latin-1"]),
    idempotency=st.text(max_size=300).filter(lambda s: s.isprintable() and s.isascii()))
def test_messages_api_raw_bytes_and_headers(gw, ledger, raw, content_type, idempotency):
    """Must hold: undecodable bodies, wrong content types and odd Idempotency-Keys are 4xx."""
    headers = {**gw.auth, "Idempotency-Key": idempotency}
    if content_type:
        headers["Content-Type"] = content_type
    check(ledger, *raw_request("POST", f"{gw.url}/api/v1/messages", raw, headers))


@FUZZ
@given(path=st.sampled_from([
    "/api/v1/conversations/{}/messages", "/api/v1/messages", "/chat/{}/", "/healthz", "/readyz", "/api/v1/schema",
    "/api/v1/docs", "/admin/", "/v1/chat/completions", "/v1/models", "/api/v1/channels/{}/webhook",
]), part=st.one_of(st.uuids().map(str), st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_%.", max_size=30)),
    method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]), body=st.binary(max_size=300))
def test_every_endpoint_any_method(gw, ledger, path, part, method, body):
    """Must hold: any method on any route, with any id in it, is answered without a 500."""
    url = gw.url + path.format(part or "x")
    data = body if method in ("POST", "PUT", "PATCH") else None
    check(ledger, *raw_request(method, url, data, {**gw.auth, "Content-Type": "application/json"}))


frames = st.one_of(
    json_values.map(json.dumps),
    st.fixed_dictionaries({"type": st.sampled_from(["message", "ping", "", "reply"])},
                          optional={"message": json_values, "client_id": json_values}).map(json.dumps),
    st.text(max_size=200),
)


@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
@given(batch=st.lists(st.one_of(frames, st.binary(max_size=100)), min_size=1, max_size=6))
def test_websocket_frames(gw, ledger, batch):
    """Must hold: any frames keep the socket open and each bad one gets an error frame; a valid
    message afterwards is still acknowledged (the consumer did not crash)."""
    slug = gw.demo["channels"]["webchat"]["slug"]
    if not hasattr(gw, "visitor"):
        gw.visitor = visitor_token(gw.url, slug)
    url = gw.url.replace("http", "ws") + f"/ws/chat/{slug}/?visitor={gw.visitor}"

    async def run():
        async with websockets.connect(url, open_timeout=CLIENT_TIMEOUT_SECONDS) as ws:
            for frame in batch:
                await ws.send(frame)
            await ws.send(json.dumps({"type": "message", "message": "still there?", "client_id": str(uuid.uuid4())}))
            while True:
                received = json.loads(await asyncio.wait_for(ws.recv(), CLIENT_TIMEOUT_SECONDS))
                if received["type"] == "ack" and received.get("client_id") and received["message_id"]:
                    if received.get("client_id", "").count("-") == 4:
                        return
                assert received["type"] in ("ack", "error", "delta", "reply", "history"), received
                if received["type"] == "error":
                    assert received.get("code") != "internal_error", received

    ledger.sent += len(batch) + 1
    asyncio.run(run())


def test_openapi_schema_operations(gw, ledger):
    """Must hold (schemathesis, every operation of /api/v1/schema, generated inputs): no 500."""
    api = schemathesis.openapi.from_url(f"{gw.url}/api/v1/schema")
    operations = [result.ok() for result in api.get_all_operations()]
    assert operations

    for operation in operations:
        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy())
        def call(case):
            if isinstance(case.body, dict) and isinstance(case.body.get("wait"), int | float):
                case.body["wait"] = min(case.body["wait"], 3)
            response = case.call(base_url=gw.url, headers=gw.auth, timeout=CLIENT_TIMEOUT_SECONDS)
            check(ledger, response.status_code, response.content)

        call()

"""Request ids, the request log and the JSON logs, from the entry points' side."""
import io
import json
import logging
import uuid

import pytest
from rest_framework.test import APIClient

from apps.agents.runtime import agent_run
from apps.conversations.models import Message
from apps.identities.models import ApiKey
from apps.logs.models import AuditEvent, LLMCall, RequestLog
from apps.logs.request_log import request_log_flush, request_log_record
from apps.logs.structured import ContextFilter, JsonFormatter
from tests.helpers import wait_until

URL = "/api/v1/messages"


def _fresh_ip() -> str:
    return f"198.51.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250 + 1}"


@pytest.fixture
def key_client(api_key_for):
    def make(user):
        raw = api_key_for(user)
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
        return client, ApiKey.objects.get(prefix=raw.split("_")[1])
    return make


@pytest.mark.django_db
class TestRequestId:
    def test_generated_and_echoed(self, key_client, customer, api_channel):
        client, _ = key_client(customer)
        response = client.post(URL, {"message": "hi"}, format="json")
        assert response.status_code == 202
        assert len(response["X-Request-ID"]) == 32

    def test_callers_id_is_kept(self, key_client, customer, api_channel):
        client, _ = key_client(customer)
        response = client.post(URL, {"message": "hi"}, format="json", HTTP_X_REQUEST_ID="trace-abc.123")
        assert response["X-Request-ID"] == "trace-abc.123"

    def test_unsafe_id_is_replaced(self, key_client, customer, api_channel):
        client, _ = key_client(customer)
        response = client.post(URL, {"message": "hi"}, format="json", HTTP_X_REQUEST_ID="bad id\nInjected: 1")
        assert response["X-Request-ID"] != "bad id\nInjected: 1" and len(response["X-Request-ID"]) == 32

    def test_every_response_carries_one(self, client):
        assert client.get("/healthz")["X-Request-ID"]

    def test_follows_the_message_into_the_agent_run_and_its_json_logs(
        self, key_client, customer, api_channel, fake_llm
    ):
        client, key = key_client(customer)
        response = client.post(URL, {"message": "trace me"}, format="json", HTTP_X_REQUEST_ID="req-42")
        message = Message.objects.get(pk=response.json()["message_id"])
        assert message.request_id == "req-42" and message.api_key == key

        stream = io.StringIO()
        handler = logging.StreamHandler(stream)
        handler.addFilter(ContextFilter())
        handler.setFormatter(JsonFormatter())
        model_call_logger = logging.getLogger("apps.agents.model_call")
        model_call_logger.addHandler(handler)
        old_level = model_call_logger.level
        model_call_logger.setLevel(logging.INFO)
        try:
            agent_run(message.id)
        finally:
            model_call_logger.removeHandler(handler)
            model_call_logger.setLevel(old_level)
        lines = [json.loads(line) for line in stream.getvalue().splitlines()]
        answered = next(line for line in lines if line["msg"] == "model answered")
        assert answered["request_id"] == "req-42" and answered["message_id"] == str(message.id)
        call = LLMCall.objects.get(message=message)
        assert call.request_id == "req-42" and call.api_key == key


@pytest.mark.django_db
class TestRequestLog:
    def test_accepted_api_request_is_logged_with_who_and_what(self, key_client, customer, api_channel):
        client, key = key_client(customer)
        response = client.post(URL, {"message": "hi"}, format="json", REMOTE_ADDR="203.0.113.9")
        assert RequestLog.objects.count() == 0  # written off the request path
        assert request_log_flush() == 1
        row = RequestLog.objects.get()
        assert row.status_code == 202 and row.rejection == ""
        assert row.channel == api_channel and row.channel_kind == "api"
        assert row.user == customer and row.api_key == key
        assert str(row.message_id) == response.json()["message_id"]
        assert row.client_ip == "203.0.113.9" and row.request_id == response["X-Request-ID"]

    def test_bad_key_is_logged_as_unauthenticated(self, api_channel):
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION="Bearer gw_nope_nope")
        # Its own address: failed logins are limited per IP, and other tests share 127.0.0.1.
        assert client.post(URL, {"message": "hi"}, format="json", REMOTE_ADDR=_fresh_ip()).status_code == 401
        request_log_flush()
        row = RequestLog.objects.get()
        assert (row.status_code, row.rejection, row.user) == (401, "unauthenticated", None)
        event = AuditEvent.objects.get(action="request.refused")  # a security refusal is audited too
        assert event.target_id == str(row.pk) and event.detail["code"] == "unauthenticated"
        assert event.detail["request_id"] == row.request_id

    def test_bad_input_is_logged_as_invalid_request(self, key_client, customer, api_channel):
        client, _ = key_client(customer)
        assert client.post(URL, {"message": ""}, format="json", REMOTE_ADDR=_fresh_ip()).status_code == 400
        request_log_flush()
        assert RequestLog.objects.get().rejection == "invalid_request"
        assert not AuditEvent.objects.exists()  # bad input is not a security event

    def test_rate_limited_is_logged_with_its_reason(self, key_client, customer, api_channel, settings):
        settings.GATEWAY_USER_RATE = "1/m"
        client, _ = key_client(customer)
        # A fresh user per run, so the shared cache's counter starts at zero.
        ip = _fresh_ip()
        statuses = [client.post(URL, {"message": f"m{i}"}, format="json", REMOTE_ADDR=ip).status_code
                    for i in range(2)]
        assert statuses == [202, 429]
        request_log_flush()
        assert sorted(RequestLog.objects.values_list("rejection", flat=True)) == ["", "rate_limited"]

    def test_non_entry_points_are_not_logged(self, client):
        client.get("/healthz")
        assert request_log_flush() == 0

    def test_a_row_pointing_at_a_deleted_user_is_kept_without_the_link(self, customer, api_channel):
        request_log_record(status_code=202, channel=api_channel, user=customer, message=uuid.uuid4())
        customer.delete()
        assert request_log_flush() == 1
        row = RequestLog.objects.get()
        assert row.user is None and row.message is None and row.channel == api_channel

    def test_flush_writes_in_batches_and_in_order(self, api_channel):
        for status in (202, 429, 401, 202, 400):
            request_log_record(status_code=status, channel_slug="api", channel_kind="api")
        assert request_log_flush(batch_size=2) == 5
        assert list(RequestLog.objects.order_by("id").values_list("status_code", flat=True)) == [
            202, 429, 401, 202, 400]
        assert request_log_flush() == 0


@pytest.mark.django_db
def test_a_row_without_a_message_id_is_linked_through_the_request_id(customer, api_channel, webchat_channel):
    """Webhook answers do not carry our message id; the request id stored on the message links them."""
    from apps.conversations.normalized import NormalizedMessage
    from apps.conversations.pipeline import accept
    from apps.logs.structured import request_id_var

    token = request_id_var.set("hook-req-1")
    try:
        accepted = accept(NormalizedMessage(channel="api", channel_id="api", user_id=str(customer.pk), message="hi"),
                          channel=api_channel, principal=customer)
    finally:
        request_id_var.reset(token)
    request_log_record(status_code=200, channel_slug="api", request_id="hook-req-1")
    # The client chose that request id; the same one on a request of another channel links nothing.
    request_log_record(status_code=200, channel_slug="web", request_id="hook-req-1")
    request_log_flush()
    row = RequestLog.objects.get(channel=api_channel)
    assert row.message_id == accepted.message.id and row.user == customer
    other = RequestLog.objects.get(channel=webchat_channel)
    assert (other.message_id, other.user_id) == (None, None)


@pytest.mark.django_db
def test_webhook_refusals_are_logged_by_the_middleware(client, api_channel):
    response = client.post("/api/v1/channels/no-such-channel/webhook", data=b"{}", content_type="application/json")
    assert response.status_code == 404
    request_log_flush()
    row = RequestLog.objects.get()
    assert (row.status_code, row.rejection, row.channel) == (404, "not_found", None)
    assert row.request_id == response["X-Request-ID"]


@pytest.mark.services
class TestPushedToRedisInBatches:
    """Services mode: a process keeps its rows and appends them to the shared Redis list in batches."""

    def test_rows_reach_the_shared_list_without_a_read(self):
        from apps.logs.buffer import redis_client
        from apps.logs.request_log import request_buffer

        for i in range(5):
            request_log_record(status_code=202, channel_slug="api", channel_kind="api", request_id=f"batched-{i}")
        assert wait_until(lambda: redis_client().llen(request_buffer().key) >= 5, timeout=30)
        rows = [json.loads(r) for r in redis_client().lrange(request_buffer().key, 0, -1)]
        assert [r["request_id"] for r in rows] == [f"batched-{i}" for i in range(5)]  # in order

    def test_a_failed_append_keeps_the_rows_ahead_of_newer_ones(self, monkeypatch, settings):
        import redis

        from apps.logs import buffer

        settings.GATEWAY_LOG_PUSH_SECONDS = 3600  # this test writes; the thread sleeps through it
        log = buffer.RedisBuffer(f"gateway:logbuffer:test-{uuid.uuid4().hex}")
        log.push({"request_id": "first"})
        monkeypatch.setattr(buffer, "_redis", redis.Redis(port=1, socket_connect_timeout=0.2))  # nothing listens
        with pytest.raises(redis.ConnectionError):
            log.batch.flush()
        monkeypatch.undo()
        log.push({"request_id": "second"})
        assert [row["request_id"] for row in log.peek(10)] == ["first", "second"]
        buffer.redis_client().delete(log.key)

"""POST /api/v1/messages and GET /api/v1/conversations/<id>/messages over HTTP."""
import json
import uuid
from datetime import timedelta

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from apps.conversations.models import Message
from apps.identities.models import ApiKey

URL = "/api/v1/messages"


@pytest.fixture
def client_for(api_key_for):
    def make(user):
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {api_key_for(user)}")
        return client
    return make


@pytest.fixture
def client(client_for, customer, api_channel):
    return client_for(customer)


def assert_error(response, status, code):
    assert response.status_code == status, response.content
    body = response.json()
    assert body["error"]["code"] == code
    assert body["error"]["message"]
    return body


@pytest.mark.django_db
@pytest.mark.parametrize("body", [
    b'{"message": "a\\u0000b"}', b'{"message": "\\ud800"}', b'{"message": "hi", "metadata": {"k": "\\u0000"}}',
    b'{"message": "hi", "metadata": {"\\udfff": 1}}', b'{"message": "hi", "metadata": {"x": NaN}}',
    b'{"message": "hi", "metadata": {"x": [Infinity]}}',
])
def test_text_postgresql_cannot_store_is_a_bad_request(client, body):
    assert_error(client.post("/api/v1/messages", body, content_type="application/json"), 400, "invalid_request")
    assert not Message.objects.exists()


@pytest.mark.django_db
class TestPostMessage:
    def test_accepted_without_wait(self, client, customer):
        response = client.post(URL, {"message": "hello"}, format="json")
        assert response.status_code == 202
        body = response.json()
        assert body["status"] == "accepted"
        message = Message.objects.get(pk=body["message_id"])
        assert str(message.conversation_id) == body["conversation_id"]
        assert message.sender == customer and message.text == "hello"

    def test_continues_a_conversation(self, client):
        first = client.post(URL, {"message": "one"}, format="json").json()
        second = client.post(URL, {"message": "two", "conversation_id": first["conversation_id"]},
                             format="json").json()
        assert second["conversation_id"] == first["conversation_id"]

    def test_idempotency_key_accepts_once(self, client):
        first = client.post(URL, {"message": "pay"}, format="json", HTTP_IDEMPOTENCY_KEY="k-1").json()
        again = client.post(URL, {"message": "pay"}, format="json", HTTP_IDEMPOTENCY_KEY="k-1").json()
        assert again["message_id"] == first["message_id"]
        assert Message.objects.count() == 1

    def test_an_idempotency_key_too_long_to_keep_whole_is_refused(self, client):
        """Cut to fit, two different keys would name one message."""
        assert client.post(URL, {"message": "a"}, format="json", HTTP_IDEMPOTENCY_KEY="k" * 200).status_code == 202
        response = client.post(URL, {"message": "b"}, format="json", HTTP_IDEMPOTENCY_KEY="k" * 200 + "x")
        assert_error(response, 400, "invalid_request")
        assert list(Message.objects.values_list("text", flat=True)) == ["a"]

    def test_idempotency_keys_of_two_users_do_not_collide(self, client, client_for, employee):
        client.post(URL, {"message": "a"}, format="json", HTTP_IDEMPOTENCY_KEY="same")
        client_for(employee).post(URL, {"message": "b"}, format="json", HTTP_IDEMPOTENCY_KEY="same")
        assert Message.objects.count() == 2

    def test_metadata_is_kept(self, client):
        body = client.post(URL, {"message": "x", "metadata": {"order": 7}}, format="json").json()
        assert Message.objects.get(pk=body["message_id"]).metadata == {"order": 7}


@pytest.mark.django_db
class TestAuthentication:
    def test_missing_key(self, api_channel):
        assert_error(APIClient().post(URL, {"message": "x"}, format="json"), 401, "unauthenticated")

    @pytest.mark.parametrize("header", ["Bearer nope", "Bearer gw_deadbeef_wrong", "Basic abc", "Bearer "])
    def test_bad_keys(self, api_channel, header):
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=header)
        assert_error(client.post(URL, {"message": "x"}, format="json"), 401, "unauthenticated")

    def test_right_prefix_wrong_secret(self, api_channel, customer):
        key, raw = ApiKey.generate(user=customer)
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer gw_{key.prefix}_{'x' * 43}")
        assert_error(client.post(URL, {"message": "x"}, format="json"), 401, "unauthenticated")

    def test_revoked_and_expired_keys(self, api_channel, customer):
        revoked, raw_revoked = ApiKey.generate(user=customer)
        ApiKey.objects.filter(pk=revoked.pk).update(revoked_at=timezone.now())
        expired, raw_expired = ApiKey.generate(user=customer, expires_at=timezone.now() - timedelta(seconds=1))
        for raw in (raw_revoked, raw_expired):
            client = APIClient()
            client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
            assert_error(client.post(URL, {"message": "x"}, format="json"), 401, "unauthenticated")

    def test_inactive_users_key(self, client_for, customer, api_channel):
        client = client_for(customer)
        customer.is_active = False
        customer.save()
        assert_error(client.post(URL, {"message": "x"}, format="json"), 401, "unauthenticated")

    def test_key_is_stored_hashed_and_last_use_recorded(self, client, customer):
        client.post(URL, {"message": "x"}, format="json")
        key = ApiKey.objects.get(user=customer)
        raw = client._credentials["HTTP_AUTHORIZATION"].split(" ", 1)[1]
        assert raw not in (key.key_hash, key.prefix) and len(key.key_hash) == 64
        assert key.last_used_at is not None


@pytest.mark.django_db
class TestBadInput:
    @pytest.mark.parametrize("body", [
        {"message": 5}, {"message": True}, {"message": ["a"]}, {"message": None}, {},
        {"message": ""}, {"message": "   "}, {"message": "x", "wait": "soon"},
        {"message": "x", "wait": True}, {"message": "x", "wait": -1}, {"message": "x", "wait": 10_000},
        {"message": "x", "conversation_id": "not-a-uuid"}, {"message": "x", "metadata": [1]},
        {"message": "x", "mesage": "typo"},
    ])
    def test_wrong_fields_are_400(self, client, body):
        assert_error(client.post(URL, body, format="json"), 400, "invalid_request")
        assert not Message.objects.exists()

    def test_oversized_message(self, client, settings):
        body = {"message": "x" * (settings.GATEWAY_MAX_MESSAGE_CHARS + 1)}
        assert_error(client.post(URL, body, format="json"), 400, "invalid_request")

    def test_malformed_json(self, client):
        response = client.post(URL, '{"message": "x"', content_type="application/json")
        assert_error(response, 400, "invalid_request")

    @pytest.mark.parametrize("raw", ["[]", '"text"', "42", "null"])
    def test_json_that_is_not_an_object(self, client, raw):
        assert_error(client.post(URL, raw, content_type="application/json"), 400, "invalid_request")

    def test_wrong_content_type(self, client):
        response = client.post(URL, "message=x", content_type="text/plain")
        assert_error(response, 415, "unsupported_media_type")

    def test_body_too_large(self, client, settings):
        raw = json.dumps({"message": "x", "metadata": {"pad": "y" * (settings.DATA_UPLOAD_MAX_MEMORY_SIZE + 10)}})
        assert_error(client.post(URL, raw, content_type="application/json"), 413, "payload_too_large")

    def test_unknown_conversation(self, client):
        body = {"message": "x", "conversation_id": str(uuid.uuid4())}
        assert_error(client.post(URL, body, format="json"), 404, "not_found")

    def test_rate_limited_with_retry_after(self, client, settings):
        settings.GATEWAY_USER_RATE = "1/m"
        client.post(URL, {"message": "x"}, format="json")
        response = client.post(URL, {"message": "x"}, format="json")
        body = assert_error(response, 429, "rate_limited")
        assert body["error"]["retry_after"] >= 1
        assert int(response["Retry-After"]) == body["error"]["retry_after"]

    def test_disabled_channel(self, client, api_channel):
        api_channel.enabled = False
        api_channel.save()
        assert_error(client.post(URL, {"message": "x"}, format="json"), 403, "channel_disabled")

    def test_wrong_method_and_unknown_path_are_json(self, client):
        assert_error(client.get(URL), 405, "method_not_allowed")
        assert_error(client.get("/api/v1/nothing-here"), 404, "not_found")

    def test_a_wrong_method_on_the_face_is_an_openai_invalid_request_error(self, client):
        for path in ("/v1/chat/completions", "/v1/models"):
            response = client.delete(path)
            assert response.status_code == 405
            assert response.json()["error"]["type"] == "invalid_request_error", path

    def test_a_model_named_with_nul_is_not_found_like_any_other(self, client):
        """``GET /v1/models/<name>`` with a NUL (``%00``) is the face's 404 ``model_not_found``: a
        name no agent can have, not a query PostgreSQL refuses (a 500)."""
        for path in ("/v1/models/%00", "/v1/models/as%00sistant"):
            response = client.get(path)
            assert response.status_code == 404, path
            assert response.json()["error"]["code"] == "model_not_found", path

    def test_a_model_name_with_a_slash_is_not_found_in_the_faces_shape(self, client):
        """OpenAI clients name models such as ``org/model``: any name the key may not use is the
        face's 404 ``model_not_found``, one with a slash (or a trailing one) too."""
        for path in ("/v1/models/org/model", "/v1/models/org%2Fmodel", "/v1/models/assistant/"):
            response = client.get(path)
            assert response.status_code == 404, path
            error = response.json()["error"]
            assert (error["type"], error["code"]) == ("invalid_request_error", "model_not_found"), path

    def test_a_host_not_served_is_a_json_400_on_api_paths(self, client, settings):
        settings.ALLOWED_HOSTS = ["gateway.example"]
        for path in (URL, "/api/v1/channels/crm/webhook", "/v1/chat/completions"):
            assert_error(client.post(path, {}, format="json", HTTP_HOST="evil.example"), 400, "invalid_request")
        assert client.get("/admin/login/", HTTP_HOST="evil.example").status_code == 400  # a page there


@pytest.mark.django_db
class TestConversationMessages:
    def test_owner_reads_messages_in_order(self, client):
        first = client.post(URL, {"message": "one"}, format="json").json()
        client.post(URL, {"message": "two", "conversation_id": first["conversation_id"]}, format="json")
        response = client.get(f"/api/v1/conversations/{first['conversation_id']}/messages")
        assert response.status_code == 200
        assert [m["message"] for m in response.json()["messages"]] == ["one", "two"]

    def test_a_long_conversation_shows_its_newest_messages(self, client, settings):
        """Past the window, the latest message (and so a reply read later) is still shown."""
        settings.GATEWAY_HISTORY_MESSAGES = 1  # a window of 10 messages
        conversation_id = client.post(URL, {"message": "m0"}, format="json").json()["conversation_id"]
        for i in range(1, 12):
            client.post(URL, {"message": f"m{i}", "conversation_id": conversation_id}, format="json")
        response = client.get(f"/api/v1/conversations/{conversation_id}/messages")
        assert [m["message"] for m in response.json()["messages"]] == [f"m{i}" for i in range(2, 12)]

    def test_another_user_gets_404(self, client, client_for, outsider):
        first = client.post(URL, {"message": "secret"}, format="json").json()
        response = client_for(outsider).get(f"/api/v1/conversations/{first['conversation_id']}/messages")
        assert_error(response, 404, "not_found")

    def test_without_key_401(self, client):
        first = client.post(URL, {"message": "secret"}, format="json").json()
        response = APIClient().get(f"/api/v1/conversations/{first['conversation_id']}/messages")
        assert_error(response, 401, "unauthenticated")

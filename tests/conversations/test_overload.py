"""Past the per-process limit of waiting requests, a request is answered 503 with Retry-After, and
nothing is accepted for it."""
import pytest
from rest_framework.test import APIClient

from apps.conversations.models import Message


@pytest.fixture
def client(api_key_for, customer, api_channel):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {api_key_for(customer)}")
    return client


@pytest.mark.django_db(transaction=True)
def test_waiting_past_the_limit_is_answered_503_with_retry_after(client, settings):
    settings.GATEWAY_MAX_WAITERS_PER_PROCESS = 0
    settings.GATEWAY_OVERLOAD_RETRY_AFTER_SECONDS = 3
    response = client.post("/api/v1/messages", {"message": "hello", "wait": 5}, format="json")
    assert response.status_code == 503, response.content
    assert response.headers["Retry-After"] == "3"
    assert response.json()["error"]["code"] == "service_unavailable"
    assert Message.objects.count() == 0


@pytest.mark.django_db(transaction=True)
def test_the_openai_face_past_the_limit_is_answered_503_with_retry_after(client, settings):
    settings.GATEWAY_MAX_WAITERS_PER_PROCESS = 0
    response = client.post("/v1/chat/completions", {"model": "assistant", "messages": [
        {"role": "user", "content": "hi"}]}, format="json")
    assert response.status_code == 503, response.content
    assert "Retry-After" in response.headers
    assert Message.objects.count() == 0


@pytest.mark.django_db(transaction=True)
def test_without_wait_the_limit_does_not_apply(client, settings):
    settings.GATEWAY_MAX_WAITERS_PER_PROCESS = 0
    assert client.post("/api/v1/messages", {"message": "hello"}, format="json").status_code == 202

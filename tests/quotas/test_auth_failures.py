"""API key brute force: failed authentications per client IP are limited and audited."""
import pytest
from django.core.cache import cache
from rest_framework.test import APIClient

from apps.logs.models import AuditEvent

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _clean_cache():
    cache.clear()
    yield
    cache.clear()


def post(key: str, ip: str = "203.0.113.9"):
    client = APIClient(REMOTE_ADDR=ip)
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")
    return client.post("/api/v1/messages", {"message": "hi"}, format="json")


def test_guessing_keys_is_cut_off_then_even_the_right_key_waits(settings, customer, api_key_for, api_channel):
    settings.GATEWAY_AUTH_FAILURES_PER_IP = 3
    good = api_key_for(customer)
    assert [post(f"gw_guess{i}_nope").status_code for i in range(3)] == [401, 401, 401]
    refused = post(good)
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "rate_limited" and int(refused["Retry-After"]) > 0
    assert AuditEvent.objects.filter(action="apikey.auth_failed", client_ip="203.0.113.9").count() == 3
    assert AuditEvent.objects.filter(action="apikey.auth_blocked", client_ip="203.0.113.9").count() == 1
    # Another address is not punished for this one's guesses.
    assert post(good, ip="198.51.100.1").status_code == 202


def test_a_valid_key_is_not_counted(settings, customer, api_key_for, api_channel):
    settings.GATEWAY_AUTH_FAILURES_PER_IP = 2
    good = api_key_for(customer)
    assert {post(good).status_code for _ in range(4)} == {202}
    assert not AuditEvent.objects.filter(action="apikey.auth_failed").exists()

"""The browser pages' guard: global IP rules and the admin login failure count."""
import pytest
from django.core.cache import cache

from apps.logs.models import AuditEvent
from apps.quotas.middleware import _login_failures_key
from apps.quotas.models import IpRule
from gateway_project import config_cache


@pytest.fixture(autouse=True)
def fresh_counts():
    """The test client's address starts and ends with no failed logins counted."""
    cache.delete(_login_failures_key("127.0.0.1"))
    yield
    cache.delete(_login_failures_key("127.0.0.1"))


@pytest.mark.django_db
def test_a_denied_address_gets_no_admin_page(client):
    IpRule.objects.create(action="deny", cidr="127.0.0.1/32")
    config_cache.config_changed()
    response = client.get("/admin/login/")
    assert response.status_code == 403 and response.json()["error"]["code"] == "ip_forbidden"
    assert client.get("/healthz").status_code == 200  # probes are not browser pages


@pytest.mark.django_db
def test_failed_admin_logins_block_the_address(client, settings, django_user_model):
    settings.GATEWAY_ADMIN_LOGIN_FAILURES_PER_IP = 3
    django_user_model.objects.create_superuser("boss", "boss@example.com", "right-password-123")
    statuses = [client.post("/admin/login/", {"username": "boss", "password": f"wrong-{n}"}).status_code
                for n in range(3)]
    assert statuses == [200, 200, 200]
    refused = client.post("/admin/login/", {"username": "boss", "password": "right-password-123"})
    assert refused.status_code == 429 and int(refused["Retry-After"]) > 0
    assert AuditEvent.objects.filter(action="admin.login_failed").count() == 3
    assert AuditEvent.objects.filter(action="admin.login_blocked").count() == 1
    assert client.get("/admin/login/").status_code == 200  # the form itself still shows

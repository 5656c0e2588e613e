"""Every route × every HTTP method × a few bodies, in-process: never a 500 (runs in both modes).

Found by the HTTP fuzzer: OPTIONS /api/v1/docs was a 500 (the Swagger page's HTML renderer has no
template for DRF's OPTIONS metadata answer).
"""
import pytest
from django.test import Client

pytestmark = pytest.mark.django_db

PATHS = ["/api/v1/conversations/{}/messages", "/api/v1/messages", "/chat/{}/", "/healthz", "/readyz",
         "/api/v1/schema", "/api/v1/docs", "/admin/", "/v1/chat/completions", "/v1/models", "/v1/models/{}",
         "/api/v1/channels/{}/webhook", "/dashboard/", "/metrics"]
PARTS = ["x", "web", "api", "00000000-0000-0000-0000-000000000000", "%25", "a.b"]
METHODS = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]
BODIES = [b"", b"{}", b"\xff\xfe", b'{"message": 1}']


def test_no_route_answers_any_method_with_a_500(customer, api_key_for, api_channel, webchat_channel):
    key = api_key_for(customer)
    client = Client(raise_request_exception=False)
    failures = []
    for path in PATHS:
        for part in PARTS if "{}" in path else ["-"]:
            for method in METHODS:
                for body in BODIES:
                    response = client.generic(method, path.format(part), data=body, content_type="application/json",
                                              HTTP_AUTHORIZATION=f"Bearer {key}")
                    if response.status_code >= 500:
                        failures.append((method, path.format(part), body, response.status_code))
    assert not failures, failures[:10]

"""The embeddable widget's session endpoint: a visitor token only for the channel's listed
origins (with the matching CORS header), readable errors otherwise; the vendored libraries match
their pinned checksums."""
import hashlib
import uuid
from pathlib import Path

import pytest
from django.conf import settings

from apps.connectors.visitors import visitor_token_read
from apps.quotas.models import IpRule

VENDOR = Path(settings.BASE_DIR) / "apps/connectors/static/webchat/vendor"
ALLOWED = "https://shop.example"


@pytest.fixture
def embedded_channel(webchat_channel):
    webchat_channel.allowed_origins = [ALLOWED]
    webchat_channel.save()
    return webchat_channel


@pytest.mark.django_db
class TestWidgetSession:
    def test_a_listed_origin_gets_a_visitor_token(self, client, embedded_channel):
        response = client.get(f"/chat/{embedded_channel.slug}/widget-session", HTTP_ORIGIN=ALLOWED)
        assert response.status_code == 200
        assert response["Access-Control-Allow-Origin"] == ALLOWED
        assert visitor_token_read(response.json()["visitor_token"], embedded_channel)

    @pytest.mark.parametrize("origin", ["https://evil.example", "", "https://shop.example.evil.example"])
    def test_another_origin_is_refused_without_a_token(self, client, embedded_channel, origin):
        headers = {"HTTP_ORIGIN": origin} if origin else {}
        response = client.get(f"/chat/{embedded_channel.slug}/widget-session", **headers)
        assert response.status_code == 403
        assert response.json() == {"error": {"code": "forbidden",
                                             "message": "This chat is not available on this site."}}

    def test_a_chat_without_visitors_says_so(self, client, embedded_channel):
        embedded_channel.allow_visitors = False
        embedded_channel.save()
        response = client.get(f"/chat/{embedded_channel.slug}/widget-session", HTTP_ORIGIN=ALLOWED)
        assert response.status_code == 403 and "sign in" in response.json()["error"]["message"]

    def test_unknown_or_disabled_chat_is_404(self, client, embedded_channel, api_channel):
        assert client.get("/chat/nope/widget-session", HTTP_ORIGIN=ALLOWED).status_code == 404
        assert client.get(f"/chat/{api_channel.slug}/widget-session", HTTP_ORIGIN=ALLOWED).status_code == 404
        assert client.post(f"/chat/{embedded_channel.slug}/widget-session", HTTP_ORIGIN=ALLOWED).status_code == 405


@pytest.mark.django_db
class TestWidgetSessionGuards:
    """The widget mints visitors like the chat page: under the IP rules and the per-address rate."""

    @pytest.mark.parametrize("method", ["post", "put", "delete"])
    def test_other_methods_get_a_json_405_even_with_csrf_checks(self, embedded_channel, method):
        """A cross-site caller reads JSON, not Django's CSRF page."""
        from django.test import Client

        response = getattr(Client(enforce_csrf_checks=True), method)(
            f"/chat/{embedded_channel.slug}/widget-session", HTTP_ORIGIN=ALLOWED)
        assert response.status_code == 405 and response["Allow"] == "GET, HEAD"
        assert response.json()["error"]["code"] == "method_not_allowed"

    @pytest.mark.parametrize("scope", ["global", "channel"])
    def test_a_denied_address_gets_no_token(self, client, embedded_channel, scope):
        IpRule.objects.create(action="deny", cidr="127.0.0.0/8",
                              channel=embedded_channel if scope == "channel" else None)
        response = client.get(f"/chat/{embedded_channel.slug}/widget-session", HTTP_ORIGIN=ALLOWED)
        assert response.status_code == 403 and response.json()["error"]["code"] == "ip_forbidden"
        if scope == "channel":  # (a global rule is the browser guard's, before any view)
            assert response["Access-Control-Allow-Origin"] == ALLOWED  # the widget can show why

    def test_an_allow_list_without_the_address_gets_no_token(self, client, embedded_channel):
        IpRule.objects.create(action="allow", cidr="10.0.0.0/8", channel=embedded_channel)
        response = client.get(f"/chat/{embedded_channel.slug}/widget-session", HTTP_ORIGIN=ALLOWED)
        assert response.status_code == 403 and response.json()["error"]["code"] == "ip_forbidden"

    def test_new_visitors_per_address_are_limited_with_the_chat_page(self, client, embedded_channel, settings):
        settings.WEBCHAT_VISITORS_PER_IP_RATE = "3/d"
        settings.GATEWAY_LIMIT_KEY_PREFIX = f"widget-{uuid.uuid4().hex[:8]}"
        url = f"/chat/{embedded_channel.slug}/widget-session"
        assert [client.get(url, HTTP_ORIGIN=ALLOWED).status_code for _ in range(2)] == [200, 200]
        assert client.get(f"/chat/{embedded_channel.slug}/").status_code == 200  # the page counts too
        refused = client.get(url, HTTP_ORIGIN=ALLOWED)
        assert refused.status_code == 429 and refused.json()["error"]["code"] == "rate_limited"
        assert "visitor_token" not in refused.json()


def test_vendored_libraries_match_their_checksums():
    lines = (VENDOR / "SHA256SUMS").read_text().split("\n")
    sums = dict(reversed(line.split()) for line in lines if line.strip())
    assert set(sums) == {"marked.min.js", "purify.min.js"}
    for name, digest in sums.items():
        assert hashlib.sha256((VENDOR / name).read_bytes()).hexdigest() == digest

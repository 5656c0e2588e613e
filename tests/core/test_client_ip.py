"""Client address behind reverse proxies: only trusted hops of X-Forwarded-For are believed."""
import pytest
from django.test import RequestFactory

from apps.core.client_ip import client_ip_for_request, client_ip_for_scope, resolve_client_ip


@pytest.fixture
def proxies(settings):
    settings.GATEWAY_TRUSTED_PROXIES = ["10.0.0.0/8", "fd00::/8"]


class TestResolve:
    def test_without_trusted_proxies_the_header_is_ignored(self, settings):
        settings.GATEWAY_TRUSTED_PROXIES = []
        assert resolve_client_ip("198.51.100.7", "1.2.3.4") == "198.51.100.7"

    def test_an_untrusted_peer_cannot_claim_another_address(self, proxies):
        assert resolve_client_ip("198.51.100.7", "10.1.1.1, 1.2.3.4") == "198.51.100.7"

    def test_a_trusted_proxy_gives_the_address_it_saw(self, proxies):
        assert resolve_client_ip("10.0.0.2", "203.0.113.9") == "203.0.113.9"

    def test_spoofed_leftmost_entries_are_skipped(self, proxies):
        # The client sent "X-Forwarded-For: 6.6.6.6"; our proxy appended the real peer.
        assert resolve_client_ip("10.0.0.2", "6.6.6.6, 203.0.113.9") == "203.0.113.9"

    def test_a_chain_of_trusted_proxies_is_walked(self, proxies):
        assert resolve_client_ip("10.0.0.2", "6.6.6.6, 203.0.113.9, 10.9.9.9, 10.0.0.3") == "203.0.113.9"

    def test_ipv6_and_ports(self, proxies):
        assert resolve_client_ip("fd00::1", "[2001:db8::5]:4431") == "2001:db8::5"
        assert resolve_client_ip("10.0.0.2", "203.0.113.9:5555") == "203.0.113.9"
        assert resolve_client_ip("::ffff:198.51.100.7", None) == "198.51.100.7"

    def test_garbage_in_the_header_stops_at_the_last_good_hop(self, proxies):
        assert resolve_client_ip("10.0.0.2", "not-an-ip") == "10.0.0.2"
        assert resolve_client_ip("10.0.0.2", "203.0.113.9, <script>, 10.0.0.3") == "10.0.0.3"

    def test_no_peer(self, proxies):
        assert resolve_client_ip(None, "203.0.113.9") is None
        assert resolve_client_ip("", None) is None


def test_request_and_scope_use_the_same_rule(proxies):
    request = RequestFactory().get("/", REMOTE_ADDR="10.0.0.2", HTTP_X_FORWARDED_FOR="6.6.6.6, 203.0.113.9")
    assert client_ip_for_request(request) == "203.0.113.9"
    scope = {"client": ("10.0.0.2", 5000), "headers": [(b"x-forwarded-for", b"6.6.6.6, 203.0.113.9")]}
    assert client_ip_for_scope(scope) == "203.0.113.9"
    assert client_ip_for_scope({"client": ("198.51.100.1", 1), "headers": scope["headers"]}) == "198.51.100.1"
    assert client_ip_for_scope({"headers": []}) is None

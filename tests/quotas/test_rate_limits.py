"""Request rates per user, role, API key, channel and client address, from the side refused."""
import time

import pytest
from django.test import override_settings

from apps.conversations.models import Message

URL = "/api/v1/messages"


def post(client, text="hi"):
    return client.post(URL, {"message": text}, format="json")


@pytest.mark.django_db
class TestHttpRates:
    def test_role_default_policy_limits_each_user_of_the_role(self, api_channel, customer, make_user, policy,
                                                             key_client, assert_error):
        policy("role", "customer", request_rate="2/m")
        client, _ = key_client(customer)
        assert [post(client).status_code for _ in range(2)] == [202, 202]
        error = assert_error(post(client), 429, "rate_limited")
        assert "2/m" in error["message"] and 1 <= error["retry_after"] <= 60
        other, _ = key_client(make_user("customer"))
        assert post(other).status_code == 202  # counted per user
        assert Message.objects.count() == 3

    def test_user_policy_overrides_the_role(self, api_channel, customer, policy, key_client):
        policy("role", "customer", request_rate="1/m")
        policy("user", customer, request_rate="3/m")
        client, _ = key_client(customer)
        assert [post(client).status_code for _ in range(4)] == [202, 202, 202, 429]

    def test_employee_role_is_not_limited_by_the_customer_policy(self, api_channel, employee, policy, key_client):
        policy("role", "customer", request_rate="1/m")
        client, _ = key_client(employee)
        assert [post(client).status_code for _ in range(3)] == [202, 202, 202]

    def test_api_key_policy_limits_that_key_only(self, api_channel, customer, policy, key_client, assert_error):
        first, key = key_client(customer)
        second, _ = key_client(customer)
        policy("api_key", key, request_rate="1/m")
        assert post(first).status_code == 202
        assert "API key" in assert_error(post(first), 429, "rate_limited")["message"]
        assert post(second).status_code == 202

    def test_api_key_setting_default(self, api_channel, customer, key_client, settings):
        settings.GATEWAY_API_KEY_RATE = "1/m"
        client, _ = key_client(customer)
        assert [post(client).status_code for _ in range(2)] == [202, 429]

    def test_channel_policy_is_shared_by_everyone_on_it(
        self, api_channel, customer, employee, policy, key_client, assert_error
    ):
        policy("channel", api_channel, request_rate="2/m")
        a, _ = key_client(customer)
        b, _ = key_client(employee)
        assert [post(a).status_code, post(b).status_code] == [202, 202]
        assert "channel" in assert_error(post(a), 429, "rate_limited")["message"]

    def test_per_address_rate_from_the_setting(
        self, api_channel, customer, employee, key_client, settings, assert_error
    ):
        settings.GATEWAY_IP_RATE = "2/m"
        a, _ = key_client(customer, remote_addr="198.51.100.20")
        b, _ = key_client(employee, remote_addr="198.51.100.20")
        c, _ = key_client(employee, remote_addr="198.51.100.21")
        assert [post(a).status_code, post(b).status_code] == [202, 202]
        assert "address" in assert_error(post(a), 429, "rate_limited")["message"]
        assert post(c).status_code == 202

    def test_per_address_rate_uses_the_proxied_address(
        self, api_channel, customer, employee, key_client, settings, assert_error
    ):
        settings.GATEWAY_IP_RATE = "1/m"
        settings.GATEWAY_TRUSTED_PROXIES = ["10.0.0.0/8"]
        a, _ = key_client(customer, remote_addr="10.0.0.5", HTTP_X_FORWARDED_FOR="203.0.113.1")
        b, _ = key_client(employee, remote_addr="10.0.0.5", HTTP_X_FORWARDED_FOR="203.0.113.2")
        assert [post(a).status_code, post(b).status_code] == [202, 202]  # two clients behind one proxy
        spoofer, _ = key_client(employee, remote_addr="10.0.0.5", HTTP_X_FORWARDED_FOR="9.9.9.9, 203.0.113.1")
        assert_error(post(spoofer), 429, "rate_limited")

    def test_channel_policy_sets_its_own_per_address_rate(self, api_channel, customer, policy, key_client,
                                                          settings):
        settings.GATEWAY_IP_RATE = "100/m"
        policy("channel", api_channel, per_ip_rate="1/m")
        client, _ = key_client(customer, remote_addr="198.51.100.30")
        assert [post(client).status_code for _ in range(2)] == [202, 429]

    def test_webhook_kinds_are_exempt_from_the_per_address_rate(self, customer, agent, settings):
        from apps.connectors.models import Channel
        from apps.conversations import pipeline
        from apps.conversations.normalized import NormalizedMessage

        settings.GATEWAY_IP_RATE = "1/m"
        settings.GATEWAY_IP_RATE_EXEMPT_KINDS = ["api"]  # stands in for a webhook kind
        channel = Channel.objects.create(slug="api", name="API", kind="api", default_agent=agent)
        for n in range(3):
            msg = NormalizedMessage(channel="api", channel_id="api", user_id=f"u{n}", message="hi")
            pipeline.accept(msg, channel=channel, client_ip="198.51.100.40")

    def test_a_stored_rate_that_does_not_parse_is_ignored_not_a_500(self, api_channel, customer, policy,
                                                                      key_client, caplog):
        policy("user", customer, request_rate="5/0m")  # valid before rates were parsed
        client, _ = key_client(customer)
        assert [post(client).status_code for _ in range(2)] == [202, 202]
        assert "a request rate that does not parse is ignored" in caplog.text
        usage = client.get("/api/v1/usage")
        assert usage.status_code == 200
        assert [r["used"] for r in usage.json()["rates"] if r["scope"] == "user"] == [None]

    def test_retry_after_is_the_end_of_the_window_rounded_up(self, api_channel, customer, policy, key_client,
                                                             monkeypatch, assert_error):
        from apps.quotas import limits

        policy("user", customer, request_rate="1/10s")
        client, _ = key_client(customer)
        ends = limits.window_end(f"user:{customer.pk}", 10, time.time()) + 10  # the next window, whole
        monkeypatch.setattr(limits.time, "time", lambda: ends - 8.1)
        assert post(client).status_code == 202
        assert assert_error(post(client), 429, "rate_limited")["retry_after"] == 9
        monkeypatch.setattr(limits.time, "time", lambda: ends - 8.1 + 9)  # waited as told: a new window
        assert post(client).status_code == 202

    def test_counters_last_their_window_whatever_redis_clock_says(self, api_channel, customer, policy, key_client,
                                                                  monkeypatch):
        from apps.quotas import limits

        policy("user", customer, request_rate="2/10s")
        client, _ = key_client(customer)
        behind = time.time() - 30  # our clock 30 s behind the store's
        monkeypatch.setattr(limits.time, "time", lambda: behind)
        assert [post(client).status_code for _ in range(4)] == [202, 202, 429, 429]

    def test_refusals_are_counted_for_the_dashboards(self, api_channel, customer, policy, key_client):
        from apps.quotas.metrics import LIMIT_REJECTIONS

        policy("user", customer, request_rate="1/m")
        client, _ = key_client(customer)
        counter = LIMIT_REJECTIONS.labels(code="rate_limited", limit="user", channel_kind="api")
        before = counter._value.get()
        post(client)
        post(client)
        assert counter._value.get() == before + 1


@pytest.mark.django_db(transaction=True)
class TestWebchatRates:
    async def test_rate_limited_is_an_error_frame_and_the_socket_stays_open(self, webchat_channel, policy, open_chat):
        from asgiref.sync import sync_to_async

        await sync_to_async(policy)("role", "customer", request_rate="1/m")
        chat = await open_chat(webchat_channel)
        await chat.send_json_to({"type": "message", "message": "one", "client_id": "c-1"})
        assert (await chat.receive_json_from(5))["type"] == "ack"
        await chat.send_json_to({"type": "message", "message": "two", "client_id": "c-2"})
        frame = await chat.receive_json_from(5)
        assert frame["type"] == "error" and frame["code"] == "rate_limited"
        assert frame["client_id"] == "c-2" and 1 <= frame["retry_after"] <= 60
        await chat.disconnect()


class TestRedisUnavailable:
    """Request rates fail open (logged and counted); configurable to fail closed.

    Tested at the pipeline, with the quota ledger's Redis (where the rate counters live) out.
    """

    DEAD_REDIS = "redis://127.0.0.1:1/0"

    @staticmethod
    def accept(channel, user):
        from apps.conversations import pipeline
        from apps.conversations.normalized import NormalizedMessage

        msg = NormalizedMessage(channel="api", channel_id="api", user_id=str(user.pk), message="hi")
        return pipeline.accept(msg, channel=channel, principal=user, client_ip="198.51.100.1")

    @pytest.mark.django_db
    def test_rates_fail_open_by_default(self, api_channel, customer, settings):
        from apps.quotas.metrics import LIMIT_BACKEND_ERRORS

        settings.GATEWAY_USER_RATE = "1/m"
        settings.GATEWAY_IP_RATE = "1/m"
        counted = LIMIT_BACKEND_ERRORS.labels(limit="rate", outcome="open")
        before = counted._value.get()
        with override_settings(GATEWAY_QUOTA_REDIS_URL=self.DEAD_REDIS):
            for _ in range(3):
                self.accept(api_channel, customer)
        assert Message.objects.count() == 3
        assert counted._value.get() == before + 6  # two rates per message, each let through

    @pytest.mark.django_db
    def test_rates_can_fail_closed(self, api_channel, customer, settings):
        from apps.core.errors import ServiceUnavailable

        settings.GATEWAY_RATE_LIMIT_FAIL_OPEN = False
        with override_settings(GATEWAY_QUOTA_REDIS_URL=self.DEAD_REDIS), pytest.raises(ServiceUnavailable) as refused:
            self.accept(api_channel, customer)
        assert refused.value.status == 503
        assert refused.value.retry_after == settings.GATEWAY_LIMIT_UNAVAILABLE_RETRY_SECONDS
        assert not Message.objects.exists()


def test_a_rate_setting_that_does_not_parse_stops_the_start(settings):
    from django.core.management import call_command
    from django.core.management.base import SystemCheckError

    settings.GATEWAY_USER_RATE = "60/x"
    settings.GATEWAY_IP_RATE = "5/0s"
    with pytest.raises(SystemCheckError) as refused:
        call_command("check")
    assert "GATEWAY_USER_RATE: '60/x' is not a rate" in str(refused.value)
    assert "GATEWAY_IP_RATE: '5/0s' is not a rate" in str(refused.value)


def test_policy_rates_are_validated_the_same_way():
    from django.core.exceptions import ValidationError

    from apps.quotas.models import parse_rate, validate_rate

    assert [parse_rate(r) for r in ("20/m", "5/10s", "100/h", "1000/d", "3/2m")] == [
        (20, 60), (5, 10), (100, 3600), (1000, 86400), (3, 120)]
    for bad in ("5/0s", "m", "20/", "20/w", "-1/m", "20/m\n", "1/367d", "1/99999999999999999999d"):
        with pytest.raises(ValidationError):
            validate_rate(bad)

"""GET /api/v1/usage (the caller's own), and what staff see and do in the admin."""
from decimal import Decimal

import pytest
from django.contrib.auth.models import Permission
from django.urls import reverse
from rest_framework.test import APIClient

from apps.agents.runtime import agent_run
from apps.conversations import pipeline
from apps.conversations.normalized import NormalizedMessage
from apps.identities.roles import Role
from apps.logs.models import AuditEvent
from apps.quotas.models import QuotaPolicy

URL = "/api/v1/usage"


def spend(channel, user, api_key=None, text="spend a little"):
    msg = NormalizedMessage(channel=channel.kind, channel_id=channel.slug, user_id=str(user.pk), message=text)
    return agent_run(pipeline.accept(msg, channel=channel, principal=user, api_key=api_key).message.id)


@pytest.mark.django_db
class TestUsageApi:
    def test_shows_own_limits_live_counters_and_rollup(self, api_channel, customer, policy, key_client):
        client, key = key_client(customer)
        policy("role", "customer", request_rate="30/m", tokens_per_day=5000)
        policy("user", customer, cost_limit=Decimal("2.50"), cost_period="month")
        policy("api_key", key, request_rate="10/m", tokens_per_month=9000)
        reply = spend(api_channel, customer, api_key=key)
        body = client.get(URL).json()
        assert body["user_id"] == str(customer.pk) and body["role"] == "customer"
        rates = {r["scope"]: r for r in body["rates"]}
        assert rates["user"]["rate"] == "30/m" and rates["user"]["source"] == "role customer"
        assert rates["user"]["used"] == 1 and rates["user"]["remaining"] == 29 and rates["user"]["resets_in"] >= 0
        assert rates["api_key"]["rate"] == "10/m" and rates["api_key"]["source"] == "API key policy"
        budgets = {(b["scope"], b["meter"], b["period"]): b for b in body["budgets"]}
        day = budgets[("user", "tokens", "day")]
        assert (day["limit"], day["used"], day["reserved"]) == (5000, reply.total_tokens, 0)
        assert day["remaining"] == 5000 - reply.total_tokens and day["exhausted"] is False
        assert day["resets_at"].endswith("T00:00:00Z") and day["source"] == "role customer"
        cost = budgets[("user", "cost", "month")]
        assert cost["limit"] == "2.500000" and cost["source"] == "user policy"
        assert budgets[("api_key", "tokens", "month")]["used"] == reply.total_tokens
        assert body["usage"]["today"]["calls"] == 1
        assert body["usage"]["this_month"]["total_tokens"] == reply.total_tokens
        assert body["api_key"]["prefix"] == key.prefix and body["api_key"]["usage"]["today"]["calls"] == 1

    def test_shows_only_the_callers_own_usage(self, api_channel, customer, employee, key_client):
        spend(api_channel, customer)
        client, _ = key_client(employee)
        body = client.get(URL).json()
        assert body["user_id"] == str(employee.pk)
        assert body["usage"]["today"]["calls"] == 0

    def test_default_setting_rate_and_no_budgets(self, api_channel, customer, key_client, settings):
        settings.GATEWAY_USER_RATE = "7/m"
        client, _ = key_client(customer)
        body = client.get(URL).json()
        assert body["rates"][0]["rate"] == "7/m" and body["rates"][0]["source"] == "setting GATEWAY_USER_RATE"
        assert body["budgets"] == []

    def test_needs_an_api_key(self, assert_error):
        assert_error(APIClient().get(URL), 401, "unauthenticated")

    def test_is_in_the_openapi_schema(self, client):
        schema = client.get("/api/v1/schema", HTTP_ACCEPT="application/json").json()
        operation = schema["paths"]["/api/v1/usage"]["get"]
        assert {"200", "401"} <= set(operation["responses"])


@pytest.fixture
def staff(client, make_user):
    """A staff member (employee role) who may view and change quotas but not reset them (unless granted)."""
    member = make_user(Role.EMPLOYEE, is_staff=True)
    for codename in ("view_userquota", "view_quotapolicy", "change_quotapolicy", "add_quotapolicy",
                     "add_iprule", "view_iprule"):
        member.user_permissions.add(Permission.objects.get(codename=codename))
    client.force_login(member)
    client.member = member
    return client


@pytest.mark.django_db
class TestAdmin:
    def test_staff_see_effective_limits_with_their_source_and_remaining(self, staff, api_channel, customer, policy):
        policy("role", "customer", request_rate="20/m", tokens_per_day=4000)
        reply = spend(api_channel, customer)
        listing = staff.get(reverse("admin:quotas_userquota_changelist")).content.decode()
        assert "20/m (role customer)" in listing
        assert f"tokens/day: {4000 - reply.total_tokens} / 4000" in listing
        detail = staff.get(reverse("admin:quotas_userquota_change", args=[customer.pk])).content.decode()
        assert "role customer" in detail and "4000" in detail

    def test_reset_needs_its_own_permission(self, staff, api_channel, customer, policy):
        policy("user", customer, tokens_per_day=4000)
        spend(api_channel, customer)
        url = reverse("admin:quotas_userquota_changelist")
        staff.post(url, {"action": "reset_quota", "_selected_action": [customer.pk]})
        assert not AuditEvent.objects.filter(action="quota.reset").exists()
        staff.member.user_permissions.add(Permission.objects.get(codename="reset_quota"))
        response = staff.post(url, {"action": "reset_quota", "_selected_action": [customer.pk]})
        assert response.status_code == 302
        event = AuditEvent.objects.get(action="quota.reset")
        assert event.actor == staff.member and event.target_id == str(customer.pk)
        listing = staff.get(url).content.decode()
        assert "tokens/day: 4000 / 4000" in listing

    def test_policy_edits_are_validated_and_audited(self, staff, customer):
        url = reverse("admin:quotas_quotapolicy_add")
        bad = staff.post(url, {"scope": "user", "user": customer.pk, "request_rate": "lots", "cost_period": "month",
                               "enabled": "on"})
        assert bad.status_code == 200 and not QuotaPolicy.objects.exists()
        mixed = staff.post(url, {"scope": "role", "role": "customer", "user": customer.pk, "cost_period": "month",
                                 "enabled": "on"})
        assert mixed.status_code == 200 and not QuotaPolicy.objects.exists()
        good = staff.post(url, {"scope": "user", "user": customer.pk, "request_rate": "5/m",
                                "tokens_per_day": "1000", "cost_period": "month", "enabled": "on"})
        assert good.status_code == 302
        event = AuditEvent.objects.get(action="quota_policy.created")
        assert event.actor == staff.member and event.after["request_rate"] == "5/m"

    def test_ip_rule_admin_refuses_a_bad_network(self, staff, api_channel):
        response = staff.post(reverse("admin:quotas_iprule_add"), {"action": "deny", "cidr": "300.1.1.1/8",
                                                                   "source": "manual", "enabled": "on"})
        assert response.status_code == 200 and b"not an IPv4/IPv6" in response.content
        assert staff.post(reverse("admin:quotas_iprule_add"), {
            "action": "deny", "cidr": "2001:db8::/32", "source": "manual", "enabled": "on",
            "channel": api_channel.pk}).status_code == 302
        assert AuditEvent.objects.filter(action="ip_rule.created").exists()

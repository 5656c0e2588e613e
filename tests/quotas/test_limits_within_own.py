"""A puppet's limits: staff who are not superusers give nobody a limit more generous than their own.

Otherwise one makes a customer account, lifts its limits (or resets its budget again and again)
and uses its API key herself. The operator's own limits (set by a superuser): 30/m, 1,000 tokens
a day, 20,000 a month, 5.00 a month.
"""
import time
from decimal import Decimal

import pytest
from django.urls import reverse

from apps.identities.roles import Role
from apps.identities.services import api_key_create
from apps.logs.models import AuditEvent
from apps.quotas.budgets import utc_today
from apps.quotas.models import QuotaPolicy, UsageDaily
from apps.quotas.policies import api_key_limits, user_limits

pytestmark = pytest.mark.django_db
ADD_POLICY = "/admin/quotas/quotapolicy/add/"
BEYOND = "more generous than your own"


@pytest.fixture
def limited(operator, policy):
    """The operator, with limits of her own."""
    policy("user", operator.member, request_rate="30/m", tokens_per_day=1000, tokens_per_month=20000,
           cost_limit=Decimal("5"), cost_period="month")
    return operator


def form(**fields):
    return {"scope": "user", "enabled": "on", "cost_period": "month", **fields}


def change_url(row) -> str:
    return reverse("admin:quotas_quotapolicy_change", args=[row.pk])


def refused_limits() -> list:
    return [e.detail["limits"] for e in AuditEvent.objects.filter(action="admin.refused").order_by("pk")]


def assert_refused(page, *names):
    assert page.status_code == 200 and BEYOND in page.content.decode()
    for name in names:
        assert name in page.content.decode()


def test_no_request_rate_above_her_own(limited, customer, policy):
    policy("role", Role.CUSTOMER, request_rate="20/m")
    # Faster over time, or more at once, or both.
    for rate in ("31/m", "1/s", "1000/h", "31/2m"):
        assert_refused(limited.post(ADD_POLICY, form(user=customer.pk, request_rate=rate)), "request rate")
    assert not QuotaPolicy.objects.filter(user=customer).exists()
    assert refused_limits() == [["request_rate"]] * 4
    assert AuditEvent.objects.filter(action="admin.refused", target_id=str(customer.pk)).count() == 4
    # Her own rate, or less (15 per 30 s is no faster and no more at once), is hers to give.
    assert limited.post(ADD_POLICY, form(user=customer.pk, request_rate="15/30s")).status_code == 302
    assert user_limits(customer).request_rate == "15/30s"
    row = QuotaPolicy.objects.get(user=customer)
    assert limited.post(change_url(row), form(user=customer.pk, request_rate="30/m")).status_code == 302
    assert_refused(limited.post(change_url(row), form(user=customer.pk, request_rate="40/m")))
    assert user_limits(customer).request_rate == "30/m"


def test_an_empty_field_is_no_limit_and_beyond_hers(limited, customer, policy):
    role = policy("role", Role.CUSTOMER, request_rate="20/m", tokens_per_month=10000)
    own = policy("user", customer, tokens_per_day=500)
    key, _raw = api_key_create(user=customer, actor=None)
    throttled_key = policy("api_key", key, tokens_per_day=100, cost_limit=Decimal("1"))
    # Cleared on the role's default: every customer unlimited this month.
    assert_refused(limited.post(change_url(role), form(scope="role", role=Role.CUSTOMER, request_rate="20/m")),
                   "tokens per month")
    # Cleared on a key: unlimited; cleared on a user, the role's (unlimited a day).
    assert_refused(limited.post(change_url(throttled_key), form(scope="api_key", api_key=key.pk)),
                   "tokens per day", "cost limit")
    assert_refused(limited.post(change_url(own), form(user=customer.pk)), "tokens per day")
    # Unlimited a month is unlimited a day too (the role's 10,000 a month was at most 10,000 a day).
    assert refused_limits() == [["tokens_per_day", "tokens_per_month"], ["tokens_per_day", "tokens_per_month",
                                "cost_limit"], ["tokens_per_day"]]
    assert QuotaPolicy.objects.get(pk=role.pk).tokens_per_month == 10000
    assert user_limits(customer).tokens_per_day == 500
    assert api_key_limits(key.pk).tokens_per_day == 100
    # The same fields filled in within hers save.
    assert limited.post(change_url(role), form(scope="role", role=Role.CUSTOMER, request_rate="20/m",
                                               tokens_per_day="1000", tokens_per_month="20000")).status_code == 302
    assert limited.post(change_url(own), form(user=customer.pk, tokens_per_day="1000")).status_code == 302
    assert QuotaPolicy.objects.get(pk=role.pk).tokens_per_month == 20000
    assert user_limits(customer).tokens_per_day == 1000


def test_no_bigger_token_or_cost_budget_for_a_user_or_a_key(limited, customer, policy):
    policy("role", Role.CUSTOMER, tokens_per_day=500, cost_limit=Decimal("1"), cost_period="month")
    key, _raw = api_key_create(user=customer, actor=None)
    key_policy = policy("api_key", key, tokens_per_month=100, cost_limit=Decimal("2"), cost_period="month")
    assert_refused(limited.post(ADD_POLICY, form(user=customer.pk, tokens_per_day="1001")), "tokens per day")
    assert_refused(limited.post(ADD_POLICY, form(user=customer.pk, cost_limit="5.01")), "cost limit")
    key_form = form(scope="api_key", api_key=key.pk, tokens_per_month="100")
    assert_refused(limited.post(change_url(key_policy), {**key_form, "tokens_per_month": "20001",
                                                         "cost_limit": "2"}), "tokens per month")
    assert_refused(limited.post(change_url(key_policy), {**key_form, "cost_limit": "6"}), "cost limit")
    # 0.17 a day comes back every day: up to 5.27 in a month, more than her 5.00.
    assert_refused(limited.post(change_url(key_policy), {**key_form, "cost_limit": "0.17", "cost_period": "day"}),
                   "cost limit")
    assert not QuotaPolicy.objects.filter(user=customer).exists() and len(refused_limits()) == 5
    assert api_key_limits(key.pk).cost_limit == Decimal("2")
    # Up to hers is fine: the same, or a day's share that fits in her month.
    assert limited.post(ADD_POLICY, form(user=customer.pk, tokens_per_day="1000", tokens_per_month="20000",
                                         cost_limit="5")).status_code == 302
    assert limited.post(change_url(key_policy), {**key_form, "tokens_per_day": "1000", "tokens_per_month": "20000",
                                                 "cost_limit": "0.16", "cost_period": "day"}).status_code == 302
    assert user_limits(customer).tokens_per_day == 1000
    assert api_key_limits(key.pk).cost_limit == Decimal("0.16")


def test_deleting_a_throttle_is_refused_when_what_follows_is_beyond_hers(limited, customer, policy):
    role = policy("role", Role.CUSTOMER, tokens_per_day=5000)
    throttle = policy("user", customer, tokens_per_day=100)
    delete = reverse("admin:quotas_quotapolicy_delete", args=[throttle.pk])
    assert limited.post(delete, {"post": "yes"}).status_code == 403
    bulk = {"action": "delete_selected", "post": "yes", "_selected_action": [throttle.pk]}
    assert limited.post(reverse("admin:quotas_quotapolicy_changelist"), bulk).status_code == 403
    assert QuotaPolicy.objects.filter(pk=throttle.pk).exists()
    assert refused_limits() == [["tokens_per_day", "tokens_per_month"]] * 2
    role.tokens_per_day = 800  # 24,800 in a 31-day month: beyond her 20,000 still
    role.save()
    assert limited.post(delete, {"post": "yes"}).status_code == 403
    role.tokens_per_day = 600
    role.save()
    assert limited.post(delete, {"post": "yes"}).status_code == 302
    assert user_limits(customer).tokens_per_day == 600


def test_a_channels_per_address_rate_stays_within_the_global_one(limited, api_channel, settings):
    settings.GATEWAY_IP_RATE = "10/m"
    channel = form(scope="channel", channel=api_channel.pk)
    assert_refused(limited.post(ADD_POLICY, {**channel, "per_ip_rate": "11/m"}), "per ip rate")
    # The channel's own counters are shared by everyone on it: not a person's allowance.
    assert limited.post(ADD_POLICY, {**channel, "per_ip_rate": "10/m", "request_rate": "5000/m",
                                     "tokens_per_day": "100000000"}).status_code == 302


def test_superusers_give_any_limits(client, make_user, customer, policy):
    root = make_user(None, is_superuser=True, is_staff=True)
    policy("user", root, request_rate="1/m", tokens_per_day=1)
    client.force_login(root)
    assert client.post(ADD_POLICY, form(user=customer.pk, request_rate="10000/s")).status_code == 302
    assert user_limits(customer).request_rate == "10000/s"


def spent(user, tokens: int) -> None:
    UsageDaily.objects.update_or_create(date=utc_today(time.time()), key=f"{user.pk}:-:-",
                                        defaults={"user": user, "total_tokens": tokens})


def test_resets_never_let_someone_spend_more_than_her_own_budget(limited, customer, policy):
    """Allowed while what they really spent this period plus a whole budget again fits in hers."""
    policy("user", customer, tokens_per_day=400, tokens_per_month=10000)
    changelist = reverse("admin:quotas_userquota_changelist")

    def reset():
        return limited.post(changelist, {"action": "reset_quota", "_selected_action": [customer.pk]})

    spent(customer, 300)
    assert reset().status_code == 302  # 300 + 400 ≤ 1000
    assert AuditEvent.objects.filter(action="quota.reset").count() == 1
    spent(customer, 700)  # resets forgive nothing of what was really spent
    page = limited.post(changelist, {"action": "reset_quota", "_selected_action": [customer.pk]}, follow=True)
    assert "Nothing was reset" in page.content.decode() and "tokens per day" in page.content.decode()
    assert AuditEvent.objects.filter(action="quota.reset").count() == 1
    event = AuditEvent.objects.get(action="admin.refused")
    assert event.target_id == str(customer.pk) and event.detail["limits"] == ["tokens_per_day"]
    spent(customer, 600)
    assert reset().status_code == 302 and AuditEvent.objects.filter(action="quota.reset").count() == 2


def test_what_someone_already_has_is_no_gift(limited, customer):
    """Customers have the default rate (60/m) and no budget: a policy tightening them is hers to set,
    though more generous than her own; someone else gave them that."""
    assert limited.post(ADD_POLICY, form(user=customer.pk, request_rate="60/m",
                                         tokens_per_day="1000000")).status_code == 302
    assert user_limits(customer).tokens_per_day == 1_000_000


def test_a_days_budget_bounds_the_month_and_a_months_the_day(operator, customer, employee, policy):
    """Whoever may spend 1,000 tokens a day may spend 31,000 a month, and a month's budget may all go
    in one day: lifting the one where only the other is hers is no limit at all, not "no limit
    before, none after"."""
    own = policy("user", operator.member, tokens_per_month=20000)  # and no daily budget
    role = policy("role", Role.CUSTOMER, tokens_per_day=1000)  # at most 31,000 a month
    throttle = policy("user", customer, tokens_per_day=100)
    # Deleting the role's policy: every customer unlimited; clearing the puppet's: 31,000 a month.
    delete_role = reverse("admin:quotas_quotapolicy_delete", args=[role.pk])
    assert operator.post(delete_role, {"post": "yes"}).status_code == 403
    assert_refused(operator.post(change_url(throttle), form(user=customer.pk)), "tokens per month")
    assert refused_limits() == [["tokens_per_day", "tokens_per_month"], ["tokens_per_month"]]
    assert QuotaPolicy.objects.filter(pk=role.pk).exists() and user_limits(customer).tokens_per_day == 100
    assert operator.post(change_url(throttle), form(user=customer.pk, tokens_per_day="600")).status_code == 302
    # The other way round: hers 1,000 a day and no month's budget; the puppet's 800 a month.
    own.tokens_per_month, own.tokens_per_day = None, 1000
    own.save()
    QuotaPolicy.objects.filter(pk=throttle.pk).update(tokens_per_day=None, tokens_per_month=800)
    role.delete()
    assert_refused(operator.post(change_url(throttle), form(user=customer.pk)), "tokens per day")
    assert user_limits(customer).tokens_per_month == 800


def test_a_monthly_ceiling_holds_against_a_daily_budget_reset_again_and_again(operator, customer, policy):
    """Her own: 20,000 tokens a month and no daily budget. The puppet's: 1,000 a day, none a month.
    A reset every day (or several a day) must not give the puppet more than her month."""
    policy("user", operator.member, tokens_per_month=20000)
    policy("user", customer, tokens_per_day=500)
    changelist = reverse("admin:quotas_userquota_changelist")
    spent(customer, 100)  # 600 a day, every day of a month: 18,600
    assert operator.post(changelist, {"action": "reset_quota", "_selected_action": [customer.pk]}).status_code == 302
    assert AuditEvent.objects.filter(action="quota.reset").count() == 1
    spent(customer, 500)  # 1,000 a day: 31,000
    operator.post(changelist, {"action": "reset_quota", "_selected_action": [customer.pk]})
    assert AuditEvent.objects.filter(action="quota.reset").count() == 1
    assert AuditEvent.objects.get(action="admin.refused").detail["limits"] == ["tokens_per_month"]

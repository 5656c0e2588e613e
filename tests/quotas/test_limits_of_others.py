"""Limits set by staff who are not superusers: never their own, never those of someone who holds
more than they do, a role's only below their own, a channel's only if they may use it, and no
rule for every address (it can shut every superuser out of the admin)."""
import pytest
from django.urls import reverse

from apps.connectors.models import Channel
from apps.identities.roles import Role
from apps.identities.services import api_key_create
from apps.logs.models import AuditEvent
from apps.quotas.models import IpRule, QuotaPolicy
from apps.quotas.policies import user_limits

pytestmark = pytest.mark.django_db
ADD_POLICY = "/admin/quotas/quotapolicy/add/"


def policy_form(**fields):
    return {"scope": "user", "enabled": "on", "cost_period": "month", "tokens_per_day": "1000000", **fields}


def refusals() -> int:
    return AuditEvent.objects.filter(action="admin.refused").count()


def test_not_her_own_limits_nor_a_stronger_users(operator, make_user, customer):
    stronger = make_user(Role.ADMIN)
    root = make_user(None, is_superuser=True)
    stronger_key, _raw = api_key_create(user=stronger, actor=None)
    own_key, _raw = api_key_create(user=operator.member, actor=None)
    for fields in ({"user": operator.member.pk}, {"user": stronger.pk}, {"user": root.pk},
                   {"scope": "api_key", "api_key": stronger_key.pk}, {"scope": "api_key", "api_key": own_key.pk},
                   {"scope": "role", "role": Role.EMPLOYEE}, {"scope": "role", "role": Role.ADMIN}):
        page = operator.post(ADD_POLICY, policy_form(**fields))
        assert page.status_code == 200 and "You may not set these limits" in page.content.decode(), fields
    assert not QuotaPolicy.objects.exists() and refusals() == 7
    assert user_limits(operator.member).tokens_per_day is None
    # A customer's, and the customer role's, are hers to set.
    assert operator.post(ADD_POLICY, policy_form(user=customer.pk)).status_code == 302
    assert operator.post(ADD_POLICY, policy_form(scope="role", role=Role.CUSTOMER)).status_code == 302
    assert user_limits(customer).tokens_per_day == 1_000_000


def test_a_stronger_users_policy_is_read_only_to_her(operator, make_user, policy):
    stronger = make_user(Role.ADMIN)
    throttled = policy("user", stronger, tokens_per_day=10)
    change = reverse("admin:quotas_quotapolicy_change", args=[throttled.pk])
    assert operator.post(change, policy_form(user=stronger.pk, tokens_per_day="0")).status_code == 403
    assert operator.post(reverse("admin:quotas_quotapolicy_delete", args=[throttled.pk]),
                         {"post": "yes"}).status_code == 403
    assert QuotaPolicy.objects.get(pk=throttled.pk).tokens_per_day == 10
    assert refusals() == 2  # each crafted POST on a page shown read-only
    # Nor can she move a policy she may change onto such a user.
    own = policy("user", make_user(Role.CUSTOMER), tokens_per_day=10)
    page = operator.post(reverse("admin:quotas_quotapolicy_change", args=[own.pk]),
                         policy_form(user=stronger.pk, tokens_per_day="0"))
    assert page.status_code == 200 and QuotaPolicy.objects.get(pk=own.pk).user_id != stronger.pk


def test_resetting_her_own_or_a_stronger_users_quota_is_refused(operator, make_user, customer):
    changelist = reverse("admin:quotas_userquota_changelist")
    for selection in ([operator.member, customer], [make_user(Role.ADMIN)]):
        operator.post(changelist, {"action": "reset_quota", "_selected_action": [u.pk for u in selection]})
    assert not AuditEvent.objects.filter(action="quota.reset").exists() and refusals() == 2
    operator.post(changelist, {"action": "reset_quota", "_selected_action": [customer.pk]})
    assert AuditEvent.objects.filter(action="quota.reset", target_id=str(customer.pk)).exists()


def test_ip_rules_only_for_channels_she_may_use(operator, agent, api_channel):
    vip = Channel.objects.create(slug="vip", name="VIP", kind="api", default_agent=agent, visibility="admin")
    add = reverse("admin:quotas_iprule_add")
    rule = {"action": "allow", "cidr": "203.0.113.7/32", "source": "manual", "enabled": "on"}
    assert operator.post(add, rule).status_code == 200  # every address: superusers' own
    assert operator.post(add, {**rule, "channel": vip.pk}).status_code == 200
    assert not IpRule.objects.exists() and refusals() == 2
    assert operator.post(add, {**rule, "channel": api_channel.pk}).status_code == 302

"""Attacks on the limits a staff member may give, over HTTP to the running gateway's admin.

Mallory (admin role, staff, granted the quota permissions; not a superuser) may spend 20,000 tokens
a month and has no daily budget. A superuser gave customers 1,000 tokens a day (so at most 31,000 a
month) and her puppet 100 a day. Whatever she does in the admin, the puppet must not end up able to
spend more in a month than she may.
"""
from __future__ import annotations

import json
import re

import pytest

from .admin_client import AdminClient
from .conftest import last_audit_id, sql

pytestmark = [pytest.mark.services, pytest.mark.e2e]

PASSWORD = "mallory-limits-Pa55word-!"

SETUP = """
import json
from django.contrib.auth.models import Permission
from apps.identities.models import User
from apps.identities.roles import Role, ensure_role_groups
from apps.quotas.models import QuotaPolicy
groups = ensure_role_groups()
mallory, _ = User.objects.get_or_create(username="mallory-limits")
mallory.is_staff, mallory.is_superuser = True, False
mallory.set_password(%(password)r)
mallory.save()
mallory.groups.set([groups[Role.ADMIN]])
mallory.user_permissions.set(Permission.objects.filter(codename__in=[
    "view_quotapolicy", "add_quotapolicy", "change_quotapolicy", "delete_quotapolicy",
    "view_userquota", "reset_quota"]))
puppet, _ = User.objects.get_or_create(username="puppet-limits")
puppet.groups.set([groups[Role.CUSTOMER]])
QuotaPolicy.objects.update_or_create(scope="user", user=mallory, defaults={"tokens_per_month": 20000})
role, _ = QuotaPolicy.objects.update_or_create(scope="role", role=Role.CUSTOMER,
                                               defaults={"tokens_per_day": 1000, "tokens_per_month": None})
throttle, _ = QuotaPolicy.objects.update_or_create(scope="user", user=puppet, defaults={"tokens_per_day": 100})
print(json.dumps({"puppet": str(puppet.pk), "role": role.pk, "throttle": throttle.pk}))
"""


@pytest.fixture(scope="module")
def setup(sec):
    out = sec.stack.manage("shell", "-c", SETUP % {"password": PASSWORD})
    return json.loads(out.strip().splitlines()[-1])


def policy(sec, pk):
    rows = sql(sec, "SELECT tokens_per_day, tokens_per_month FROM quotas_quotapolicy WHERE id = %s", pk)
    return rows[0] if rows else None


def refused(sec, since: int) -> list:
    return [json.loads(d) if isinstance(d, str) else d for (d,) in sql(
        sec, "SELECT detail FROM logs_auditevent WHERE action = 'admin.refused' AND id > %s ORDER BY id", since)]


def test_lifting_a_days_budget_where_only_a_month_is_hers_is_refused(sec, setup, attack):
    mallory = AdminClient(sec.url).login("mallory-limits", PASSWORD)
    since = last_audit_id(sec)
    # 1. Delete the customers' role policy: every customer, her puppet's fallback, unlimited.
    page = f"/admin/quotas/quotapolicy/{setup['role']}/delete/"
    status, form = mallory.form(page)
    assert status == 200, status
    status, _text, _ = mallory.post(page, form.set("post", "yes"))
    attack.tried(admitted=policy(sec, setup["role"]) is None, audited=status == 403)
    # 2. Clear the role's daily budget, or the puppet's: no limit, or 31,000 a month.
    for pk in (setup["role"], setup["throttle"]):
        page = f"/admin/quotas/quotapolicy/{pk}/change/"
        status, form = mallory.form(page, "quotapolicy_form")
        assert status == 200 and form.get("tokens_per_day"), status
        status, text, _ = mallory.post(page, form.set("tokens_per_day", ""))
        attack.tried(admitted=policy(sec, pk)[0] is None, audited="more generous than your own" in text)
    assert policy(sec, setup["role"]) == (1000, None) and policy(sec, setup["throttle"]) == (100, None)
    assert [sorted(d["limits"]) for d in refused(sec, since)] == [
        ["tokens_per_day", "tokens_per_month"], ["tokens_per_day", "tokens_per_month"], ["tokens_per_month"]]
    # What is within hers still saves: 600 a day is 18,600 in a month.
    page = f"/admin/quotas/quotapolicy/{setup['throttle']}/change/"
    status, form = mallory.form(page, "quotapolicy_form")
    status, text, _ = mallory.post(page, form.set("tokens_per_day", "600"))
    assert status == 302, re.sub(r"\s+", " ", text)[:300]
    assert policy(sec, setup["throttle"]) == (600, None)

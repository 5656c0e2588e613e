"""A blocked staff member keeps her session but none of what it opened: the admin (where she could
lift her own block), the dashboards and the handoff console."""
import pytest
from django.contrib.auth.models import Permission
from django.urls import reverse

from apps.identities.models import User
from apps.identities.roles import Role
from apps.identities.services import user_block
from apps.logs.models import AuditEvent

pytestmark = pytest.mark.django_db


def test_a_blocked_staff_member_is_refused_every_staff_page(client, make_user, admin_user):
    staff = make_user(Role.ADMIN, is_staff=True)
    staff.user_permissions.add(*Permission.objects.filter(codename__in=["change_conversation", "view_dashboard"]))
    client.force_login(staff)
    for page in ("/admin/", "/dashboard/", "/console/"):
        assert client.get(page).status_code == 200, page
    user_block(user=staff, actor=admin_user, reason="left the company")
    assert client.get("/admin/").status_code == 302  # to the login page
    changelist = reverse("admin:identities_user_changelist")
    client.post(changelist, {"action": "unblock_users", "_selected_action": [str(staff.pk)]})
    assert User.objects.get(pk=staff.pk).blocked_at is not None
    assert not AuditEvent.objects.filter(action="user.unblocked").exists()
    assert client.get("/dashboard/").status_code == 403
    assert client.get("/console/").status_code == 403


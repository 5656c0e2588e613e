"""Groups and object permissions in the admin, attacked by staff who are not superusers: joining
a group whose grants on one object she lacks, stripping the grants of someone who holds more than
she does, emptying a role's group. Each would leave a channel's talk or a stronger account hers."""
import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group, Permission
from django.test import Client
from guardian.shortcuts import assign_perm

from apps.connectors.models import Channel
from apps.identities.permissions import usable_channel_ids
from apps.identities.privileges import outranks
from apps.identities.roles import Role
from apps.logs.models import AuditEvent

pytestmark = pytest.mark.django_db
User = get_user_model()
NEW_PASSWORD = {"password1": "Stolen-pass-123!", "password2": "Stolen-pass-123!", "usable_password": "true"}


def with_perms(user, *dotted):
    for name in dotted:
        app_label, codename = name.split(".")
        user.user_permissions.add(Permission.objects.get(content_type__app_label=app_label, codename=codename))
    return User.objects.get(pk=user.pk)


def refusals() -> list[str]:
    return list(AuditEvent.objects.filter(action="admin.refused").order_by("id").values_list("detail__what", flat=True))


def test_joining_a_group_with_an_object_grant_she_lacks_is_refused(client, make_user, agent):
    vip = Channel.objects.create(slug="vip", name="VIP", kind="webchat", default_agent=agent, visibility="admin")
    vip_desk = Group.objects.create(name="vip-desk")
    assign_perm("connectors.use_channel", vip_desk, vip)
    lead = with_perms(make_user(Role.EMPLOYEE, is_staff=True), "identities.grant_role", "identities.view_user",
                      "identities.change_user")
    employee = Group.objects.get(name=Role.EMPLOYEE)
    form = {"username": lead.username, "first_name": "", "last_name": "", "email": "", "is_active": "on",
            "is_staff": "on", "groups": [str(employee.pk), str(vip_desk.pk)],
            "user_permissions": [str(pk) for pk in lead.user_permissions.values_list("pk", flat=True)],
            "identities-TOTAL_FORMS": "0", "identities-INITIAL_FORMS": "0"}
    client.force_login(lead)
    page = client.post(f"/admin/identities/user/{lead.pk}/change/", form)
    assert page.status_code == 200 and "use_channel on a channel" in page.content.decode()
    assert not User.objects.get(pk=lead.pk).groups.filter(pk=vip_desk.pk).exists()
    assert vip.pk not in usable_channel_ids(User.objects.get(pk=lead.pk))
    assert refusals() == ["grant permissions"]
    # One who may use the channel may join it.
    vip.visibility = "internal"
    vip.save()
    assert client.post(f"/admin/identities/user/{lead.pk}/change/", form).status_code == 302
    assert User.objects.get(pk=lead.pk).groups.filter(pk=vip_desk.pk).exists()


def test_the_object_grants_of_someone_holding_more_are_not_hers_to_change(client, make_user, agent):
    peer = make_user(Role.ADMIN, is_staff=True)
    assign_perm("agents.delete_agent", peer, agent)  # one grant more than her: he outranks her
    actor = make_user(Role.ADMIN, is_staff=True)
    client.force_login(actor)
    manage = f"/admin/agents/agent/{agent.pk}/permissions/user-manage/{peer.pk}/"
    assert client.get(manage).status_code == 200  # she may look
    assert client.post(manage, {"permissions": ["view_agent"]}).status_code == 403
    assert peer.has_perm("agents.delete_agent", agent) and outranks(peer, actor)
    assert client.post(f"/admin/identities/user/{peer.pk}/password/", NEW_PASSWORD).status_code == 403
    assert not Client().login(username=peer.username, password=NEW_PASSWORD["password1"])
    # Nor through a group he is in.
    team = Group.objects.create(name="agent-owners")
    peer.groups.add(team)
    group_manage = f"/admin/agents/agent/{agent.pk}/permissions/group-manage/{team.pk}/"
    assert client.post(group_manage, {"permissions": ["view_agent"]}).status_code == 403
    assert refusals() == ["change their object permissions", "set this user's password",
                          "change this group's object permissions"]
    # Someone holding no more than she does is hers to change, as before.
    colleague = make_user(Role.ADMIN, is_staff=True)
    assign_perm("agents.view_agent", colleague, agent)
    manage = f"/admin/agents/agent/{agent.pk}/permissions/user-manage/{colleague.pk}/"
    assert client.post(manage, {"permissions": ["change_agent"]}).status_code == 302
    assert colleague.has_perm("agents.change_agent", agent)


def test_a_role_group_holding_more_than_her_is_read_only(client, make_user, roles):
    admin = make_user(Role.ADMIN, is_staff=True)
    lead = with_perms(make_user(Role.EMPLOYEE, is_staff=True), "auth.view_group", "auth.change_group",
                      "auth.delete_group", "identities.grant_role", "identities.view_user",
                      "identities.change_user")
    client.force_login(lead)
    admin_group = roles[Role.ADMIN]
    before = set(admin_group.permissions.values_list("pk", flat=True))
    kept = [p.pk for p in admin_group.permissions.all()
            if lead.has_perm(f"{p.content_type.app_label}.{p.codename}")]
    change = f"/admin/auth/group/{admin_group.pk}/change/"
    assert client.post(change, {"name": "admin", "permissions": kept}).status_code == 403
    assert client.post(f"/admin/auth/group/{admin_group.pk}/delete/", {"post": "yes"}).status_code == 403
    assert set(admin_group.permissions.values_list("pk", flat=True)) == before
    assert client.post(f"/admin/identities/user/{admin.pk}/password/", NEW_PASSWORD).status_code == 403
    # A group holding nothing beyond her, whose members hold nothing beyond her, is hers to change;
    # a role's group keeps its name (roles are found by it).
    helpers = Group.objects.create(name="helpers")
    helpers.user_set.add(make_user(Role.CUSTOMER))
    assert client.post(f"/admin/auth/group/{helpers.pk}/change/", {"name": "helpers-2"}).status_code == 302
    customers = roles[Role.CUSTOMER]
    form = {"name": "renamed", "permissions": list(customers.permissions.values_list("pk", flat=True))}
    client.post(f"/admin/auth/group/{customers.pk}/change/", form)
    assert Group.objects.filter(name=Role.CUSTOMER).exists() and not Group.objects.filter(name="renamed").exists()


def test_a_role_group_is_judged_in_a_few_queries_however_many_members(make_user, roles,
                                                                     django_assert_max_num_queries):
    from apps.identities.privileges import group_outranks

    actor = make_user(Role.ADMIN, is_staff=True)
    for _ in range(30):
        make_user(Role.CUSTOMER)
    with django_assert_max_num_queries(8):
        assert not group_outranks(roles[Role.CUSTOMER], actor)

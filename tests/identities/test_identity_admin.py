"""Staff in the admin: roles, blocks, merges, identity links, API keys and object permissions.

Each action from the staff member who may do it (the change happens and is audited) and from the
one who may not (nothing changes).
"""
import re

import pytest
from django.contrib.auth.models import Permission
from django.urls import reverse
from django.utils import timezone
from rest_framework.test import APIClient

from apps.agents.models import Agent, Visibility
from apps.conversations import pipeline
from apps.conversations.models import Conversation, Message
from apps.conversations.normalized import NormalizedMessage
from apps.identities.models import ApiKey, ChannelIdentity, User
from apps.identities.permissions import user_can_use_agent
from apps.identities.roles import Role
from apps.logs.models import AuditEvent


def with_perms(user, *dotted):
    for name in dotted:
        app_label, codename = name.split(".")
        user.user_permissions.add(Permission.objects.get(content_type__app_label=app_label, codename=codename))
    return User.objects.get(pk=user.pk)


@pytest.fixture
def admin_client(client, admin_user):
    """An admin-role staff member (not a superuser): has grant_role, block_user, merge_users."""
    client.force_login(admin_user)
    return client


@pytest.fixture
def weak_staff(make_user):
    """Staff who may view and edit users, but holds none of the identities.* privileges."""
    return with_perms(make_user(Role.EMPLOYEE, is_staff=True), "identities.view_user", "identities.change_user",
                      "identities.view_apikey", "agents.view_agent", "agents.change_agent")


@pytest.fixture
def weak_client(client, weak_staff):
    client.force_login(weak_staff)
    return client


def run_action(client, action, users, **extra):
    return client.post(reverse("admin:identities_user_changelist"),
                       {"action": action, "_selected_action": [str(u.pk) for u in users], **extra})


def roles_of(user):
    return sorted(User.objects.get(pk=user.pk).groups.values_list("name", flat=True))


@pytest.mark.django_db
class TestRoles:
    def test_staff_with_grant_role_promotes_and_it_is_audited(self, admin_client, admin_user, customer):
        run_action(admin_client, "make_employee", [customer])
        assert roles_of(customer) == ["employee"]
        event = AuditEvent.objects.get(action="user.role_changed")
        assert event.actor == admin_user and event.target_id == str(customer.pk)
        assert event.before == {"roles": ["customer"]} and event.after == {"roles": ["employee"]}

    def test_staff_without_grant_role_cannot_use_the_role_actions(self, weak_client, customer):
        page = weak_client.get(reverse("admin:identities_user_changelist"))
        assert b"make_employee" not in page.content
        run_action(weak_client, "make_admin", [customer])
        assert roles_of(customer) == ["customer"]
        assert not AuditEvent.objects.filter(action="user.role_changed").exists()

    def test_staff_without_grant_role_cannot_change_groups_in_the_form(self, weak_client, customer, roles):
        url = reverse("admin:identities_user_change", args=[customer.pk])
        form = {"username": customer.username, "first_name": "", "last_name": "", "email": "",
                "is_active": "on", "is_staff": "on", "is_superuser": "on", "groups": [str(roles["admin"].pk)],
                "identities-TOTAL_FORMS": "0", "identities-INITIAL_FORMS": "0"}
        response = weak_client.post(url, form)
        assert response.status_code == 302, response.content[:2000]
        customer.refresh_from_db()
        assert roles_of(customer) == ["customer"] and not customer.is_staff and not customer.is_superuser

    def test_privilege_change_in_the_form_is_audited(self, admin_client, customer, roles):
        url = reverse("admin:identities_user_change", args=[customer.pk])
        form = {"username": customer.username, "first_name": "", "last_name": "", "email": "",
                "is_active": "on", "groups": [str(roles["employee"].pk)],
                "identities-TOTAL_FORMS": "0", "identities-INITIAL_FORMS": "0"}
        assert admin_client.post(url, form).status_code == 302
        assert roles_of(customer) == ["employee"]
        event = AuditEvent.objects.get(action="user.privileges_changed")
        assert event.before["groups"] == ["customer"] and event.after["groups"] == ["employee"]

    def test_only_a_superuser_can_make_a_superuser(self, admin_client, customer):
        url = reverse("admin:identities_user_change", args=[customer.pk])
        form = {"username": customer.username, "is_active": "on", "is_superuser": "on",
                "identities-TOTAL_FORMS": "0", "identities-INITIAL_FORMS": "0"}
        admin_client.post(url, form)
        customer.refresh_from_db()
        assert not customer.is_superuser

    def test_role_and_blocked_filters_and_search(self, admin_client, customer, employee):
        url = reverse("admin:identities_user_changelist")
        page = admin_client.get(url, {"role": "employee"}).content.decode()
        assert employee.username in page and customer.username not in page
        User.objects.filter(pk=customer.pk).update(blocked_at=timezone.now())
        page = admin_client.get(url, {"blocked": "yes"}).content.decode()
        assert customer.username in page and employee.username not in page
        page = admin_client.get(url, {"q": employee.username}).content.decode()
        assert employee.username in page and customer.username not in page


@pytest.mark.django_db
class TestBlocking:
    def test_block_and_unblock_are_audited_and_enforced(self, admin_client, admin_user, customer, api_channel,
                                                       api_key_for):
        raw = api_key_for(customer)
        run_action(admin_client, "block_users", [customer])
        customer.refresh_from_db()
        assert customer.blocked_at is not None
        assert AuditEvent.objects.get(action="user.blocked").actor == admin_user
        api = APIClient()
        api.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
        assert api.post("/api/v1/messages", {"message": "hi"}, format="json").status_code == 403
        run_action(admin_client, "unblock_users", [customer])
        assert api.post("/api/v1/messages", {"message": "hi"}, format="json").status_code == 202
        assert AuditEvent.objects.filter(action="user.unblocked").count() == 1

    def test_staff_without_block_user_cannot_block(self, weak_client, customer):
        run_action(weak_client, "block_users", [customer])
        customer.refresh_from_db()
        assert customer.blocked_at is None

    def test_a_staff_member_cannot_block_themselves(self, admin_client, admin_user):
        run_action(admin_client, "block_users", [admin_user])
        admin_user.refresh_from_db()
        assert admin_user.blocked_at is None


@pytest.mark.django_db
class TestMerge:
    def test_merge_moves_identities_keys_conversations_and_keeps_history(
        self, admin_client, admin_user, api_channel, customer, make_user
    ):
        duplicate = make_user(Role.EMPLOYEE)
        ChannelIdentity.objects.create(channel=api_channel, external_id="slack-U1", user=duplicate)
        key, _raw = ApiKey.generate(user=duplicate)
        accepted = pipeline.accept(
            NormalizedMessage(channel="api", channel_id="api", user_id="x", message="from the duplicate"),
            channel=api_channel, principal=duplicate)
        confirm = run_action(admin_client, "merge_users", [customer, duplicate])
        assert confirm.status_code == 200 and b"Choose the account that remains" in confirm.content
        run_action(admin_client, "merge_users", [customer, duplicate], apply="Merge", survivor=str(customer.pk))

        assert ChannelIdentity.objects.get(external_id="slack-U1").user == customer
        assert ApiKey.objects.get(pk=key.pk).user == customer
        assert Conversation.objects.get(pk=accepted.conversation.pk).user == customer
        assert Message.objects.get(pk=accepted.message.pk).sender == customer
        duplicate.refresh_from_db()
        assert duplicate.merged_into == customer and not duplicate.is_active
        assert roles_of(customer) == ["customer", "employee"]
        event = AuditEvent.objects.get(action="user.merged")
        assert event.actor == admin_user and event.before["merged"] == str(duplicate.pk)
        assert event.detail["moved"]["conversations.conversation"] == 1

    def test_staff_without_merge_users_cannot_merge(self, weak_client, customer, employee):
        run_action(weak_client, "merge_users", [customer, employee], apply="Merge", survivor=str(customer.pk))
        employee.refresh_from_db()
        assert employee.merged_into is None and employee.is_active


@pytest.mark.django_db
class TestIdentityLink:
    def test_moving_an_identity_to_another_user_is_audited(self, admin_client, api_channel, customer, employee):
        identity = ChannelIdentity.objects.create(channel=api_channel, external_id="wecom-7", user=customer)
        url = reverse("admin:identities_channelidentity_change", args=[identity.pk])
        response = admin_client.post(url, {"user": str(employee.pk), "display_name": ""})
        assert response.status_code == 302
        assert ChannelIdentity.objects.get(pk=identity.pk).user == employee
        event = AuditEvent.objects.get(action="identity.linked")
        assert event.before == {"user": str(customer.pk)} and event.after == {"user": str(employee.pk)}

    def test_staff_without_merge_users_cannot_relink(self, client, make_user, api_channel, customer, employee):
        staff = with_perms(make_user(Role.EMPLOYEE, is_staff=True), "identities.view_channelidentity",
                           "identities.change_channelidentity")
        client.force_login(staff)
        identity = ChannelIdentity.objects.create(channel=api_channel, external_id="wecom-8", user=customer)
        client.post(reverse("admin:identities_channelidentity_change", args=[identity.pk]),
                    {"user": str(employee.pk), "display_name": ""})
        assert ChannelIdentity.objects.get(pk=identity.pk).user == customer


@pytest.mark.django_db
class TestApiKeys:
    def test_created_key_is_shown_once_scoped_and_works(self, admin_client, admin_user, customer, api_channel, agent):
        response = admin_client.post(reverse("admin:identities_apikey_add"), {
            "user": str(customer.pk), "name": "crm sync", "expires_at_0": "", "expires_at_1": "",
            "channels": [str(api_channel.pk)], "agents": [str(agent.pk)],
        })
        assert response.status_code == 200
        raw = re.search(r'id="raw-api-key"[^>]*>(gw_[^<]+)<', response.content.decode()).group(1)
        assert "no-store" in response["Cache-Control"]
        key = ApiKey.objects.get(name="crm sync")
        assert raw.startswith(f"gw_{key.prefix}_") and raw not in key.key_hash
        assert list(key.channels.all()) == [api_channel] and list(key.agents.all()) == [agent]
        change_page = admin_client.get(reverse("admin:identities_apikey_change", args=[key.pk])).content.decode()
        assert raw not in change_page and key.key_hash not in change_page
        event = AuditEvent.objects.get(action="apikey.created")
        assert event.actor == admin_user and event.after["channels"] == ["api"] and raw not in str(event.after)
        api = APIClient()
        api.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
        assert api.post("/api/v1/messages", {"message": "hi"}, format="json").status_code == 202

    def test_no_key_for_someone_given_an_agent_the_actor_may_not_use(self, client, make_user, agent, roles):
        """A key is the holder's rights: a customer granted one admin-only agent (django-guardian)
        holds something an employee does not, so an employee who may add keys cannot mint one in
        that customer's name (directly granted, or through a group), nor move them an identity; a
        grant the employee holds anyway (by her role) does not stop her."""
        from django.contrib.auth.models import Group
        from guardian.shortcuts import assign_perm

        ops = Agent.objects.create(slug="ops", name="Ops", model=agent.model, visibility=Visibility.ADMIN)
        helper = Agent.objects.create(slug="helper", name="Helper", model=agent.model,
                                      visibility=Visibility.INTERNAL)
        actor = with_perms(make_user(Role.EMPLOYEE, is_staff=True), "identities.add_apikey",
                           "identities.view_apikey", "identities.view_user", "identities.change_user")
        direct, through_group, harmless = make_user(Role.CUSTOMER), make_user(Role.CUSTOMER), make_user(Role.CUSTOMER)
        assign_perm("agents.use_agent", direct, ops)
        insiders = Group.objects.create(name="ops insiders")
        assign_perm("agents.use_agent", insiders, ops)
        through_group.groups.add(insiders)
        assign_perm("agents.use_agent", harmless, helper)  # internal: the employee may use it herself
        assert not user_can_use_agent(actor, ops) and user_can_use_agent(direct, ops)
        client.force_login(actor)

        def mint(user):
            return client.post(reverse("admin:identities_apikey_add"), {
                "user": str(user.pk), "name": f"for {user.username}", "expires_at_0": "", "expires_at_1": ""})

        for outranking in (direct, through_group):
            assert mint(outranking).status_code == 200  # the form again, with its error
            assert not ApiKey.objects.filter(user=outranking).exists()
            assert client.get(reverse("admin:identities_user_change", args=[outranking.pk])).context[
                "has_change_permission"] is False
        assert AuditEvent.objects.filter(action="admin.refused", actor=actor).count() >= 2
        assert mint(harmless).status_code == 200 and ApiKey.objects.filter(user=harmless).exists()

    def test_revoke_action_is_audited_and_the_key_stops_working(self, admin_client, customer, api_channel):
        key, raw = ApiKey.generate(user=customer)
        admin_client.post(reverse("admin:identities_apikey_changelist"),
                          {"action": "revoke_keys", "_selected_action": [str(key.pk)]})
        key.refresh_from_db()
        assert key.revoked_at is not None
        assert AuditEvent.objects.get(action="apikey.revoked").before["revoked_at"] is None
        api = APIClient()
        api.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
        assert api.post("/api/v1/messages", {"message": "hi"}, format="json").status_code == 401

    def test_staff_who_may_only_view_keys_cannot_create_or_revoke(self, weak_client, customer):
        key, _raw = ApiKey.generate(user=customer)
        assert weak_client.get(reverse("admin:identities_apikey_add")).status_code == 403
        weak_client.post(reverse("admin:identities_apikey_changelist"),
                         {"action": "revoke_keys", "_selected_action": [str(key.pk)]})
        key.refresh_from_db()
        assert key.revoked_at is None

    def test_keys_cannot_be_deleted_only_revoked(self, admin_client, customer):
        key, _raw = ApiKey.generate(user=customer)
        assert admin_client.post(reverse("admin:identities_apikey_delete", args=[key.pk]),
                                 {"post": "yes"}).status_code == 403
        assert ApiKey.objects.filter(pk=key.pk).exists()


@pytest.mark.django_db
class TestObjectPermissionsAdmin:
    @pytest.fixture
    def billing(self, llm_model):
        return Agent.objects.create(slug="billing", name="Billing", model=llm_model, visibility=Visibility.INTERNAL)

    def test_admin_grants_one_customer_one_agent_and_it_is_audited(self, admin_client, admin_user, customer,
                                                                  billing):
        url = reverse("admin:agents_agent_permissions_manage_user", args=[billing.pk, customer.pk])
        assert admin_client.get(url).status_code == 200
        response = admin_client.post(url, {"permissions": ["use_agent"]})
        assert response.status_code == 302
        assert user_can_use_agent(User.objects.get(pk=customer.pk), billing)
        event = AuditEvent.objects.get(action="permission.changed")
        assert event.actor == admin_user and event.target_type == "agents.agent"
        assert event.before == {"perms": []} and event.after == {"perms": ["use_agent"]}
        admin_client.post(url, {"permissions": [], "submit": "Save"})  # a browser posts the button too
        assert not user_can_use_agent(User.objects.get(pk=customer.pk), billing)
        assert AuditEvent.objects.filter(action="permission.changed").count() == 2

    def test_staff_who_may_edit_agents_but_not_object_permissions_is_turned_away(self, weak_client, customer,
                                                                               billing):
        url = reverse("admin:agents_agent_permissions_manage_user", args=[billing.pk, customer.pk])
        response = weak_client.post(url, {"permissions": ["use_agent"]})
        assert response.status_code == 302 and response["Location"] == reverse("admin:index")
        assert not user_can_use_agent(User.objects.get(pk=customer.pk), billing)
        assert not AuditEvent.objects.filter(action="permission.changed").exists()

    def test_group_grant_on_a_channel_through_the_admin(self, admin_client, customer, api_channel):
        from django.contrib.auth.models import Group

        from apps.identities.permissions import user_can_use_channel

        api_channel.visibility = Visibility.INTERNAL
        api_channel.save()
        team = Group.objects.create(name="pilot-customers")
        customer.groups.add(team)
        url = reverse("admin:connectors_channel_permissions_manage_group", args=[api_channel.pk, team.pk])
        assert admin_client.post(url, {"permissions": ["use_channel"]}).status_code == 302
        assert user_can_use_channel(User.objects.get(pk=customer.pk), api_channel)
        assert AuditEvent.objects.get(action="permission.changed").detail["holder"] == f"group:{team.pk}"


@pytest.mark.django_db
def test_group_permissions_need_grant_role_and_are_audited(client, make_user, roles, admin_user):
    staff = with_perms(make_user(Role.EMPLOYEE, is_staff=True), "auth.view_group", "auth.change_group")
    client.force_login(staff)
    url = reverse("admin:auth_group_change", args=[roles["customer"].pk])
    perm = Permission.objects.get(codename="use_admin_tools")
    client.post(url, {"name": "customer", "permissions": [str(perm.pk)]})
    assert not roles["customer"].permissions.filter(pk=perm.pk).exists()
    staff = with_perms(staff, "identities.grant_role")
    client.force_login(staff)
    before = list(roles["customer"].permissions.values_list("pk", flat=True))
    # Only what he holds himself: use_admin_tools is not his yet, so it is refused (and audited).
    assert client.post(url, {"name": "customer", "permissions": [*map(str, before), str(perm.pk)]}).status_code == 200
    assert not roles["customer"].permissions.filter(pk=perm.pk).exists()
    assert AuditEvent.objects.get(action="admin.refused").detail["permissions"] == ["identities.use_admin_tools"]
    staff = with_perms(staff, "identities.use_admin_tools")
    client.force_login(staff)
    assert client.post(url, {"name": "customer", "permissions": [*map(str, before), str(perm.pk)]}).status_code == 302
    assert roles["customer"].permissions.filter(pk=perm.pk).exists()
    assert "use_admin_tools" in AuditEvent.objects.get(action="group.permissions_changed").after["permissions"]


@pytest.mark.django_db
def test_setting_a_peers_password_is_audited_and_a_superusers_is_refused(admin_client, make_user, admin_user):
    customer = make_user(Role.CUSTOMER)
    url = reverse("admin:auth_user_password_change", args=[customer.pk])
    new = {"password1": "A-new-Pa55word-1", "password2": "A-new-Pa55word-1", "usable_password": "true"}
    assert admin_client.post(url, new).status_code == 302
    event = AuditEvent.objects.get(action="user.password_set")
    assert event.target_id == str(customer.pk) and event.actor_id == admin_user.pk
    root = User.objects.create_superuser("root-2", "root@example.org", "Root-Pa55word-1")
    refused = admin_client.post(reverse("admin:auth_user_password_change", args=[root.pk]), new)
    assert refused.status_code == 403
    assert User.objects.get(pk=root.pk).check_password("Root-Pa55word-1")
    assert AuditEvent.objects.filter(action="admin.refused", target_id=str(root.pk)).exists()


@pytest.mark.django_db
@pytest.mark.parametrize("bad", ["model no longer installed", "no such primary key"])
def test_an_object_permission_naming_no_object_grants_nothing_and_breaks_nothing(client, make_user, admin_user, bad):
    """Rows guardian's own save would refuse, as a removed app or a hand-written row leaves them:
    the user admin still opens the user, and the row counts as no grant."""
    from django.contrib.contenttypes.models import ContentType
    from guardian.models import UserObjectPermission

    target = make_user(Role.CUSTOMER)
    if bad == "model no longer installed":
        content_type = ContentType.objects.create(app_label="gone_plugin", model="widget")
        permission = Permission.objects.create(codename="use_widget", name="use widget", content_type=content_type)
        object_pk = "1"
    else:
        content_type = ContentType.objects.get_for_model(Agent)
        permission, object_pk = Permission.objects.get(codename="use_agent", content_type=content_type), "not-a-number"
    UserObjectPermission.objects.bulk_create([UserObjectPermission(
        user=target, permission=permission, content_type=content_type, object_pk=object_pk)])
    client.force_login(admin_user)
    page = client.get(reverse("admin:identities_user_change", args=[target.pk]))
    assert page.status_code == 200 and page.context["has_change_permission"] is True

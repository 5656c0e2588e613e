"""Roles as groups with real permissions, and guardian object permissions beyond the role."""
import io

import pytest
from django.contrib.auth.models import Group
from django.core.management import call_command
from django.utils import timezone
from guardian.shortcuts import assign_perm

from apps.agents.models import Agent, Visibility
from apps.connectors.models import Channel
from apps.identities.permissions import user_can_use_agent, user_can_use_channel, visibility_allows
from apps.identities.roles import ROLE_PERMISSIONS, Role


@pytest.fixture
def make_agent(llm_model):
    def make(slug, visibility):
        return Agent.objects.create(slug=slug, name=slug.title(), model=llm_model, visibility=visibility)
    return make


def group_perms(name):
    return {f"{p.content_type.app_label}.{p.codename}" for p in Group.objects.get(name=name).permissions.all()}


@pytest.mark.django_db
class TestRoleGroups:
    def test_each_role_group_carries_its_permissions(self, roles):
        assert {"identities.use_public_agents"} <= group_perms(Role.CUSTOMER)
        assert "identities.use_internal_agents" not in group_perms(Role.CUSTOMER)
        assert {"identities.use_internal_agents", "identities.use_internal_tools"} <= group_perms(Role.EMPLOYEE)
        assert "identities.use_admin_tools" not in group_perms(Role.EMPLOYEE)
        assert "identities.grant_role" not in group_perms(Role.EMPLOYEE)
        assert {"identities.use_admin_tools", "identities.grant_role", "identities.block_user"} <= group_perms(
            Role.ADMIN)

    def test_seed_roles_is_idempotent_and_restores_a_removed_permission(self, roles):
        roles[Role.EMPLOYEE].permissions.clear()
        call_command("seed_roles", stdout=io.StringIO())
        call_command("seed_roles", stdout=io.StringIO())
        assert set(ROLE_PERMISSIONS[Role.EMPLOYEE]) <= group_perms(Role.EMPLOYEE)
        assert Group.objects.filter(name__in=[Role.CUSTOMER, Role.EMPLOYEE, Role.ADMIN]).count() == 3


@pytest.mark.django_db
class TestAgentPermissions:
    @pytest.mark.parametrize("role,public,internal,admin", [
        (Role.CUSTOMER, True, False, False),
        (Role.EMPLOYEE, True, True, False),
        (Role.ADMIN, True, True, True),
        (None, False, False, False),  # an outsider: no role, nothing
    ])
    def test_role_ladder(self, make_user, make_agent, role, public, internal, admin):
        user = make_user(role)
        assert user_can_use_agent(user, make_agent("pub", Visibility.PUBLIC)) is public
        assert user_can_use_agent(user, make_agent("int", Visibility.INTERNAL)) is internal
        assert user_can_use_agent(user, make_agent("adm", Visibility.ADMIN)) is admin

    def test_unknown_visibility_is_treated_as_admin_only(self, employee, admin_user):
        assert visibility_allows(employee, "secret") is False
        assert visibility_allows(admin_user, "secret") is True

    def test_object_permission_grants_one_agent_beyond_the_role(self, customer, make_agent):
        billing, other = make_agent("billing", Visibility.INTERNAL), make_agent("hr", Visibility.INTERNAL)
        assign_perm("agents.use_agent", customer, billing)
        customer = type(customer).objects.get(pk=customer.pk)  # fresh permission caches
        assert user_can_use_agent(customer, billing) is True
        assert user_can_use_agent(customer, other) is False

    def test_object_permission_through_a_group(self, customer, make_agent):
        billing = make_agent("billing", Visibility.INTERNAL)
        team = Group.objects.create(name="billing-customers")
        assign_perm("agents.use_agent", team, billing)
        assert user_can_use_agent(customer, billing) is False
        customer.groups.add(team)
        customer = type(customer).objects.get(pk=customer.pk)
        assert user_can_use_agent(customer, billing) is True

    def test_blocked_user_may_use_nothing_even_with_a_grant(self, employee, make_agent):
        billing = make_agent("billing", Visibility.INTERNAL)
        assign_perm("agents.use_agent", employee, billing)
        employee.blocked_at = timezone.now()
        assert user_can_use_agent(employee, billing) is False
        assert user_can_use_agent(employee, make_agent("pub", Visibility.PUBLIC)) is False

    def test_inactive_user_may_use_nothing(self, admin_user, make_agent):
        admin_user.is_active = False
        assert user_can_use_agent(admin_user, make_agent("pub", Visibility.PUBLIC)) is False


@pytest.mark.django_db
class TestChannelPermissions:
    def test_public_channel_is_open_to_any_active_user(self, outsider, api_channel):
        assert user_can_use_channel(outsider, api_channel) is True

    def test_internal_channel_refuses_customers_unless_granted(self, customer, employee, agent):
        staff_chat = Channel.objects.create(slug="staff", name="Staff", kind="webchat", default_agent=agent,
                                            visibility=Visibility.INTERNAL)
        assert user_can_use_channel(employee, staff_chat) is True
        assert user_can_use_channel(customer, staff_chat) is False
        assign_perm("connectors.use_channel", customer, staff_chat)
        customer = type(customer).objects.get(pk=customer.pk)
        assert user_can_use_channel(customer, staff_chat) is True

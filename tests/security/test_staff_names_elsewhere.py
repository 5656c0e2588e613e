"""Pages beyond the admin's filters, choices and model deletion pages that named a channel, agent
or tool the staff member may not use (apps/identities/scoped_pickers.py; docs/security.md "Names
of what she may not use"): the route tester's list of rules, the dashboards' conversation filters."""
import pytest

from apps.agents.models import Agent, LLMModel, Provider
from apps.connectors.models import Channel
from apps.identities.roles import Role
from apps.routing.models import Route
from tests.security.test_staff_pickers import desk_member, page, superuser

pytestmark = pytest.mark.django_db

# The hidden agent's and channel's names and slugs, and a route's name to that agent.
NAMES = ("Secret ops", "secret-ops", "VIP desk", "vip-desk", "board-escalations")


@pytest.fixture
def hidden(llm_model, fake_llm):
    """An admin-only agent, and an admin-only channel it answers (as in test_staff_pickers)."""
    vault = Provider.objects.create(slug="vault", name="Vault LLM", base_url=fake_llm.base_url)
    model = LLMModel.objects.create(provider=vault, name="vault-gpt")
    agent = Agent.objects.create(slug="secret-ops", name="Secret ops", model=model, visibility="admin")
    channel = Channel.objects.create(slug="vip-desk", name="VIP desk", kind="api", default_agent=agent,
                                     visibility="admin")
    return agent, channel


def assert_names_none(text: str, where: str) -> None:
    assert [name for name in NAMES if name in text] == [], where


def test_the_route_tester_lists_no_rule_she_may_not_see(client, make_user, agent, webchat_channel, hidden):
    """Every enabled rule was listed with its name, agent and conditions: a route to a hidden
    agent ("the sender may not use agent secret-ops"), one on a hidden channel ("channel is vip-desk")."""
    secret, vip = hidden
    Route.objects.create(name="board-escalations", priority=1, agent=secret)
    Route.objects.create(name="vip-only", priority=2, agent=agent, channel=vip)
    Route.objects.create(name="front desk", priority=3, agent=agent, keyword="hello")
    sender = make_user(Role.CUSTOMER)
    form = {"channel": webchat_channel.pk, "sender": sender.username, "message": "hello", "metadata": "{}"}
    client.force_login(desk_member(make_user, "view_route"))
    shown = client.post("/admin/routing/route/test/", form)
    assert shown.status_code == 200
    text = shown.content.decode()
    assert "front desk" in text and "Agent: assistant" in text, text  # the decision and her rules stay
    assert_names_none(text, "route tester")
    assert "vip-only" not in text
    client.force_login(superuser(make_user))
    assert "board-escalations" in client.post("/admin/routing/route/test/", form).content.decode()


def test_the_dashboards_conversation_filters_offer_only_what_she_may_use(client, make_user, agent,
                                                                         webchat_channel, hidden):
    client.force_login(desk_member(make_user, "view_dashboard"))
    shown = page(client, "/dashboard/conversations/")
    assert "assistant" in shown and webchat_channel.slug in shown
    assert_names_none(shown, "dashboard conversation filters")
    client.force_login(superuser(make_user))
    shown = page(client, "/dashboard/conversations/")
    assert "secret-ops" in shown and "vip-desk" in shown

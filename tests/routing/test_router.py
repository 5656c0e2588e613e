"""Route rules: first match by priority, each condition, stickiness, permissions, the admin tester."""
import pytest

from apps.agents.models import Agent, Visibility
from apps.connectors.models import Channel
from apps.conversations import pipeline
from apps.conversations.models import Conversation
from apps.conversations.normalized import NormalizedMessage
from apps.core.errors import Forbidden, NotFound
from apps.routing.models import Route
from apps.routing.router import command_of


def send(channel, user, text, **fields):
    msg = NormalizedMessage(channel=channel.kind, channel_id=channel.slug, user_id=str(user.pk), message=text,
                            **fields)
    return pipeline.accept(msg, channel=channel, principal=user).message


@pytest.fixture
def make_agent(llm_model):
    def make(slug, visibility=Visibility.PUBLIC, **fields):
        return Agent.objects.create(slug=slug, name=slug.title(), model=llm_model, visibility=visibility, **fields)
    return make


@pytest.fixture
def billing(make_agent):
    return make_agent("billing")


@pytest.fixture
def ops(make_agent):
    return make_agent("ops", Visibility.INTERNAL)


@pytest.mark.django_db
class TestMatching:
    def test_no_rules_uses_the_channel_default(self, api_channel, customer, agent):
        assert send(api_channel, customer, "hello").agent == agent

    def test_first_match_by_priority_wins(self, api_channel, customer, billing, make_agent):
        refunds = make_agent("refunds")
        Route.objects.create(name="refunds", priority=20, agent=refunds, keyword="refund")
        Route.objects.create(name="billing", priority=10, agent=billing, keyword="refund")
        assert send(api_channel, customer, "I want a REFUND").agent == billing

    def test_disabled_rule_is_ignored(self, api_channel, customer, billing, agent):
        Route.objects.create(name="off", agent=billing, keyword="refund", enabled=False)
        assert send(api_channel, customer, "refund").agent == agent

    def test_command_prefix(self, api_channel, customer, billing, agent):
        Route.objects.create(name="cmd", agent=billing, command="billing")
        assert send(api_channel, customer, "/billing where is my invoice").agent == billing
        assert send(api_channel, customer, "/billingx nope").agent == agent
        assert send(api_channel, customer, "about /billing").agent == agent

    def test_command_parsing(self):
        assert command_of("/Billing now") == "billing"
        assert command_of("/billing") == "billing"
        assert command_of("/ billing") == "" and command_of("billing") == "" and command_of("/") == ""

    def test_regex(self, api_channel, customer, billing, agent):
        Route.objects.create(name="order ids", agent=billing, pattern=r"\border\s+#?\d{4,}")
        assert send(api_channel, customer, "where is Order #12345?").agent == billing
        assert send(api_channel, customer, "order soon").agent == agent

    def test_channel_and_kind(self, api_channel, webchat_channel, customer, billing, make_agent):
        web_agent = make_agent("webby")
        Route.objects.create(name="web kind", priority=1, agent=web_agent, channel_kind="webchat")
        Route.objects.create(name="api channel", priority=2, agent=billing, channel=api_channel)
        assert send(webchat_channel, customer, "hi").agent == web_agent
        assert send(api_channel, customer, "hi").agent == billing

    def test_sender_role_and_group(self, api_channel, customer, employee, ops, make_agent, roles):
        from django.contrib.auth.models import Group

        vip_group = Group.objects.create(name="vip")
        vip = make_agent("vip")
        Route.objects.create(name="staff", priority=1, agent=ops, sender_role="employee")
        Route.objects.create(name="vip", priority=2, agent=vip, sender_group=vip_group)
        assert send(api_channel, employee, "hi").agent == ops
        assert send(api_channel, customer, "hi").agent.slug == "assistant"
        customer.groups.add(vip_group)
        assert send(api_channel, customer, "hi").agent == vip

    def test_metadata_a_platform_vouches_for(self, agent, customer, billing):
        crm = Channel.objects.create(slug="crm", name="CRM", kind="crm", default_agent=agent)
        Route.objects.create(name="pro plan", agent=billing, metadata={"plan": "pro"})
        assert send(crm, customer, "hi", metadata={"plan": "pro"}).agent == billing
        assert send(crm, customer, "hi", metadata={"plan": "free"}).agent == agent

    def test_metadata_an_api_client_wrote_matches_no_rule(self, api_channel, customer, billing, agent):
        Route.objects.create(name="pro plan", agent=billing, metadata={"plan": "pro"})
        assert send(api_channel, customer, "hi", metadata={"plan": "pro"}).agent == agent

    def test_conversation_metadata_counts(self, api_channel, customer, billing, agent):
        first = send(api_channel, customer, "hi")
        Conversation.objects.filter(pk=first.conversation_id).update(metadata={"plan": "pro"}, agent=None)
        Route.objects.create(name="pro plan", agent=billing, metadata={"plan": "pro"})
        assert send(api_channel, customer, "again", conversation_id=str(first.conversation_id)).agent == billing

    def test_all_conditions_must_hold(self, api_channel, customer, billing, agent):
        Route.objects.create(name="both", agent=billing, keyword="invoice", channel_kind="webchat")
        assert send(api_channel, customer, "invoice").agent == agent


@pytest.mark.django_db
class TestStickiness:
    def test_conversation_sticks_to_its_agent(self, api_channel, customer, billing, agent):
        Route.objects.create(name="billing", agent=billing, keyword="invoice")
        first = send(api_channel, customer, "my invoice")
        assert first.agent == billing
        later = send(api_channel, customer, "thanks", conversation_id=str(first.conversation_id))
        assert later.agent == billing

    def test_non_rerouting_rules_do_not_move_a_conversation(self, api_channel, customer, billing, agent):
        first = send(api_channel, customer, "hello")
        Route.objects.create(name="billing", agent=billing, keyword="invoice")
        later = send(api_channel, customer, "my invoice", conversation_id=str(first.conversation_id))
        assert later.agent == agent

    def test_rerouting_rule_moves_the_conversation(self, api_channel, customer, billing, agent):
        first = send(api_channel, customer, "hello")
        Route.objects.create(name="billing cmd", agent=billing, command="billing", reroutes=True)
        moved = send(api_channel, customer, "/billing help", conversation_id=str(first.conversation_id))
        assert moved.agent == billing
        assert Conversation.objects.get(pk=first.conversation_id).agent == billing
        after = send(api_channel, customer, "and then?", conversation_id=str(first.conversation_id))
        assert after.agent == billing

    def test_staff_move_sticks(self, api_channel, customer, billing):
        first = send(api_channel, customer, "hello")
        Conversation.objects.filter(pk=first.conversation_id).update(agent=billing)
        assert send(api_channel, customer, "again", conversation_id=str(first.conversation_id)).agent == billing


@pytest.mark.django_db
class TestPermissions:
    def test_rule_to_an_agent_the_sender_may_not_use_is_skipped(self, api_channel, customer, employee, ops, agent):
        Route.objects.create(name="ops", agent=ops, keyword="deploy")
        assert send(api_channel, customer, "deploy please").agent == agent
        assert send(api_channel, employee, "deploy please").agent == ops

    def test_default_agent_the_sender_may_not_use_is_refused(self, api_channel, customer, ops):
        api_channel.default_agent = ops
        api_channel.save()
        with pytest.raises(Forbidden):
            send(api_channel, customer, "hi")

    def test_requested_agent_must_be_permitted(self, api_channel, customer, employee, ops):
        with pytest.raises(NotFound):
            send(api_channel, customer, "hi", control={"requested_agent": "ops"})
        with pytest.raises(NotFound):
            send(api_channel, customer, "hi", control={"requested_agent": "no-such-agent"})
        assert send(api_channel, employee, "hi", control={"requested_agent": "ops"}).agent == ops

    def test_requested_agent_in_client_metadata_is_ignored(self, api_channel, employee, ops, agent):
        assert send(api_channel, employee, "hi", metadata={"requested_agent": "ops"}).agent == agent

    def test_outsider_is_refused(self, api_channel, outsider):
        with pytest.raises(Forbidden):
            send(api_channel, outsider, "hi")


@pytest.mark.django_db
class TestAdmin:
    def test_invalid_regex_and_command_are_rejected(self, billing):
        from django.core.exceptions import ValidationError

        with pytest.raises(ValidationError) as info:
            Route(name="bad", agent=billing, pattern="(unclosed", command="bad cmd!").full_clean()
        assert set(info.value.message_dict) == {"pattern", "command"}

    def test_route_tester_shows_the_match_and_why(self, client, admin_user, api_channel, customer, billing, ops):
        admin_user.is_superuser = True
        admin_user.save()
        Route.objects.create(name="ops first", priority=1, agent=ops, keyword="invoice")
        Route.objects.create(name="billing", priority=2, agent=billing, keyword="invoice")
        client.force_login(admin_user)
        page = client.get("/admin/routing/route/test/")
        assert page.status_code == 200
        response = client.post("/admin/routing/route/test/", {
            "channel": api_channel.pk, "sender": customer.username, "message": "my invoice", "metadata": "{}",
        })
        html = response.content.decode()
        assert response.status_code == 200
        assert "Agent: billing" in html and "rule &#x27;billing&#x27; (priority 2) matched" in html
        assert "the sender may not use agent ops" in html
        assert "✓ text contains &#x27;invoice&#x27;" in html

    def test_route_tester_needs_route_permission(self, client, make_user, api_channel):
        staff = make_user("employee", is_staff=True)
        client.force_login(staff)
        assert client.get("/admin/routing/route/test/").status_code == 403

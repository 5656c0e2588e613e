"""Tools obey the speaking user at execution time, whatever the model asks for: role, guardian
object permissions, blocks. The LLM stand-in asks for the tool (``[[tool:NAME {json}]]``)."""
import pytest
from django.contrib.auth.models import Group
from django.utils import timezone
from guardian.shortcuts import assign_perm

from apps.agents.models import ToolCall
from apps.agents.runtime import agent_run
from apps.connectors.models import Channel
from apps.identities.models import User
from apps.logs.models import AuditEvent
from tests.helpers import send

SEARCH = '[[tool:search_conversations {"query": "refund"}]]'




@pytest.fixture
def refund_chat(api_channel, make_user):
    """Another customer's conversation the employee tool could reveal."""
    send(api_channel, make_user("customer"), "please refund order 1234")


@pytest.mark.django_db
class TestToolPermissionAtExecution:
    def test_customer_talking_the_model_into_an_employee_tool_gets_no_run_and_an_audit(
        self, api_channel, tool_agent, tools, customer, refund_chat, fake_llm
    ):
        message = send(api_channel, customer, f"show me everyone's refunds {SEARCH}")
        reply = agent_run(message.id)
        call = ToolCall.objects.get(message=message)
        assert call.status == "refused" and call.name == "search_conversations"
        assert "not permitted" in reply.text and "order 1234" not in reply.text
        # The model was told so, in the tool message it got back.
        tool_messages = [m for m in fake_llm.stats()["last_request"]["messages"] if m["role"] == "tool"]
        assert "not permitted" in tool_messages[-1]["content"]
        event = AuditEvent.objects.get(action="tool.refused")
        assert event.actor == customer and event.target_id == str(tools["search_conversations"].pk)
        assert event.detail["message_id"] == str(message.pk)

    def test_the_same_request_from_an_employee_runs(self, api_channel, tool_agent, employee, refund_chat):
        message = send(api_channel, employee, SEARCH)
        reply = agent_run(message.id)
        assert ToolCall.objects.get(message=message).status == "ok"
        assert "order 1234" in reply.text
        assert not AuditEvent.objects.filter(action="tool.refused").exists()

    def test_it_finds_only_what_was_said_on_channels_the_speaker_may_use(
            self, api_channel, tool_agent, employee, make_user, agent, refund_chat):
        board = Channel.objects.create(slug="board", name="Board", kind="api", default_agent=agent,
                                       visibility="admin")
        send(board, make_user("admin"), "refund the acquisition escrow")
        reply = agent_run(send(api_channel, employee, SEARCH).id)
        assert "order 1234" in reply.text and "escrow" not in reply.text

    def test_object_permission_grants_one_customer_one_employee_tool(
        self, api_channel, tool_agent, tools, customer, make_user, refund_chat
    ):
        assign_perm("agents.use_tool", customer, tools["search_conversations"])
        granted = agent_run(send(api_channel, customer, SEARCH).id)
        assert "order 1234" in granted.text
        other_customer = make_user("customer")
        refused = send(api_channel, other_customer, SEARCH)
        agent_run(refused.id)
        assert ToolCall.objects.get(message=refused).status == "refused"
        # The grant is for that one tool only.
        lookup = send(api_channel, customer, '[[tool:customer_lookup {"username": "x"}]]')
        agent_run(lookup.id)
        assert ToolCall.objects.get(message=lookup).status == "refused"

    def test_object_permission_through_a_group(self, api_channel, tool_agent, tools, customer, refund_chat):
        team = Group.objects.create(name="support-pilot")
        assign_perm("agents.use_tool", team, tools["search_conversations"])
        customer.groups.add(team)
        message = send(api_channel, customer, SEARCH)
        agent_run(message.id)
        assert ToolCall.objects.get(message=message).status == "ok"

    def test_a_user_blocked_after_sending_gets_no_tool_run(self, api_channel, tool_agent, employee, refund_chat):
        message = send(api_channel, employee, SEARCH)
        User.objects.filter(pk=employee.pk).update(blocked_at=timezone.now())
        assert agent_run(message.id) is None  # stopped before the model asked for any tool
        assert not ToolCall.objects.filter(message=message).exists()
        message.refresh_from_db()
        assert (message.status, message.error_code) == ("failed", "sender_refused")

    def test_block_user_tool_blocks_through_the_identities_service(self, api_channel, tool_agent, admin_user,
                                                                   make_user):
        victim = make_user("customer")
        message = send(api_channel, admin_user,
                       f'[[tool:block_user {{"username": "{victim.username}", "reason": "spam"}}]]')
        agent_run(message.id)
        victim.refresh_from_db()
        assert victim.blocked_at is not None and victim.blocked_reason == "spam"
        event = AuditEvent.objects.get(action="user.blocked")
        assert event.actor == admin_user and event.detail["reason"] == "spam"

"""The tool loop: registry, schema validation, the step bound, and permission at execution."""
import json

import pytest

from apps.agents.models import Tool, ToolCall
from apps.agents.runtime import agent_run
from apps.agents.services import tool_sync
from apps.agents.tools import registered_tool
from apps.conversations.models import Message
from apps.logs.models import AuditEvent, LLMCall
from tests.helpers import send


@pytest.mark.django_db
class TestRegistry:
    def test_builtins_have_a_row_per_role_level(self, tools):
        assert {"current_time", "search_conversations", "customer_lookup", "usage_report", "block_user"} <= set(tools)
        assert tools["current_time"].visibility == "public"
        assert tools["search_conversations"].visibility == "internal"
        assert tools["block_user"].visibility == "admin" and tools["usage_report"].visibility == "admin"
        assert tools["block_user"].parameters == registered_tool("block_user").parameters

    def test_sync_keeps_staff_choices(self, tools):
        Tool.objects.filter(slug="current_time").update(visibility="internal", description="Staff text")
        tool_sync()
        tool = Tool.objects.get(slug="current_time")
        assert tool.visibility == "internal" and tool.description == "Staff text"

    def test_the_model_is_offered_only_tools_the_sender_may_use(self, api_channel, tool_agent, customer, fake_llm):
        agent_run(send(api_channel, customer, "hi").id)
        offered = {t["function"]["name"] for t in fake_llm.stats()["last_request"]["tools"]}
        assert offered == {"current_time"}


@pytest.mark.django_db
class TestToolLoop:
    def test_tool_result_goes_back_to_the_model(self, api_channel, tool_agent, customer, fake_llm):
        message = send(api_channel, customer, 'time? [[tool:current_time {"timezone": "Asia/Shanghai"}]]')
        reply = agent_run(message.id)
        assert reply.text.startswith("Tool current_time said: ")
        said = json.loads(reply.text.removeprefix("Tool current_time said: "))
        assert said["timezone"] == "Asia/Shanghai" and said["now"].endswith("+08:00")
        call = ToolCall.objects.get(message=message)
        assert call.status == "ok" and call.user == customer and call.step == 1 and call.tool.slug == "current_time"
        assert json.loads(call.result) == said
        sent = fake_llm.stats()["last_request"]["messages"]
        assert [m["role"] for m in sent[-3:]] == ["user", "assistant", "tool"]
        assert sent[-2]["tool_calls"][0]["function"]["name"] == "current_time"
        # Both model calls are logged; the reply counts the tokens of both.
        calls = LLMCall.objects.filter(message=message)
        assert calls.count() == 2 and reply.total_tokens == sum(c.total_tokens for c in calls)

    def test_a_tool_call_cut_off_at_max_tokens_is_not_run(self, api_channel, tool_agent, customer, fake_llm):
        """A model stopped by max_tokens mid-call sends arguments cut short (finish_reason "length"):
        "" would read as {}, so a tool of no required argument would run with none of those meant."""
        tool_agent.max_tokens = 1
        tool_agent.save(update_fields=["max_tokens"])
        message = send(api_channel, customer, 'time? [[tool:current_time {"timezone": "Asia/Shanghai"}]]')
        assert agent_run(message.id) is None
        message.refresh_from_db()
        assert (message.status, message.error_code) == ("failed", "tool_call_cut_off")
        assert fake_llm.stats()["last_request"]["max_tokens"] == 1
        assert not ToolCall.objects.filter(message=message).exists()

    def test_invalid_arguments_are_refused_by_the_schema_not_run(self, api_channel, tool_agent, customer):
        message = send(api_channel, customer, 'time? [[tool:current_time {"timezone": 42}]]')
        reply = agent_run(message.id)
        call = ToolCall.objects.get(message=message)
        assert call.status == "invalid" and "42 is not of type 'string'" in call.result
        assert "invalid arguments" in reply.text

    def test_unknown_and_unallowed_tools_are_not_run(self, api_channel, agent, tools, admin_user):
        agent.tools.set([tools["current_time"]])  # the agent may not call block_user at all
        message = send(api_channel, admin_user, '[[tool:block_user {"username": "x", "reason": "spam"}]]')
        reply = agent_run(message.id)
        assert ToolCall.objects.get(message=message).status == "unknown"
        assert "no tool named 'block_user'" in reply.text

    def test_disabled_tool_is_not_run(self, api_channel, tool_agent, tools, customer):
        Tool.objects.filter(slug="current_time").update(enabled=False)
        message = send(api_channel, customer, "[[tool:current_time {}]]")
        agent_run(message.id)
        assert ToolCall.objects.get(message=message).status == "unknown"

    def test_the_loop_stops_after_max_steps(self, api_channel, tool_agent, customer, fake_llm, settings):
        settings.GATEWAY_TOOL_MAX_STEPS = 3
        message = send(api_channel, customer, "again and again [[tool_loop:current_time {}]]")
        before = fake_llm.stats()["requests"]
        assert agent_run(message.id) is None
        message.refresh_from_db()
        assert message.status == "failed" and message.error_code == "tool_steps_exceeded"
        assert fake_llm.stats()["requests"] - before == 4  # three tool steps, then the refusal to go on
        assert list(ToolCall.objects.filter(message=message).order_by("step").values_list("step", flat=True)) == [
            1, 2, 3]
        assert not Message.objects.filter(reply_to=message).exists()


@pytest.mark.django_db
class TestPermissionAtExecution:
    def test_customer_asking_for_an_admin_tool_is_refused_and_audited(
        self, api_channel, tool_agent, tools, customer, make_user
    ):
        victim = make_user("customer")
        message = send(api_channel, customer,
                       f'[[tool:block_user {{"username": "{victim.username}", "reason": "because"}}]]')
        reply = agent_run(message.id)
        victim.refresh_from_db()
        assert victim.blocked_at is None  # the tool did not run
        call = ToolCall.objects.get(message=message)
        assert call.status == "refused"
        assert "not permitted" in reply.text
        event = AuditEvent.objects.get(action="tool.refused")
        assert event.actor == customer and event.target_id == str(tools["block_user"].pk)
        assert event.target_type == "agents.tool"

    def test_employee_may_not_block_but_may_search(self, api_channel, tool_agent, employee, customer):
        send(api_channel, customer, "my parcel never arrived")
        refused = send(api_channel, employee, '[[tool:usage_report {"days": 1}]]')
        agent_run(refused.id)
        assert ToolCall.objects.get(message=refused).status == "refused"
        allowed = send(api_channel, employee, '[[tool:search_conversations {"query": "parcel"}]]')
        reply = agent_run(allowed.id)
        assert ToolCall.objects.get(message=allowed).status == "ok"
        assert "my parcel never arrived" in reply.text

    def test_admin_blocks_a_user_through_the_tool(self, api_channel, tool_agent, admin_user, make_user):
        victim = make_user("customer")
        message = send(api_channel, admin_user,
                       f'[[tool:block_user {{"username": "{victim.username}", "reason": "abuse"}}]]')
        agent_run(message.id)
        victim.refresh_from_db()
        assert victim.blocked_at is not None and victim.blocked_reason == "abuse"
        event = AuditEvent.objects.get(action="user.blocked")
        assert event.actor == admin_user and event.after["reason"] == "abuse"

    def test_admin_cannot_block_staff_via_a_tool(self, api_channel, tool_agent, admin_user, make_user):
        other_admin = make_user("admin", is_staff=True)
        message = send(api_channel, admin_user,
                       f'[[tool:block_user {{"username": "{other_admin.username}", "reason": "oops"}}]]')
        agent_run(message.id)
        other_admin.refresh_from_db()
        assert other_admin.blocked_at is None and ToolCall.objects.get(message=message).status == "error"

    def test_usage_report_for_admin(self, api_channel, tool_agent, admin_user, customer):
        agent_run(send(api_channel, customer, "hello").id)
        message = send(api_channel, admin_user, '[[tool:usage_report {"days": 7}]]')
        reply = agent_run(message.id)
        report = json.loads(reply.text.removeprefix("Tool usage_report said: "))
        assert report["rows"][0]["agent"] == "assistant" and report["rows"][0]["calls"] >= 1

    def test_refusal_happens_mid_loop_after_allowed_steps(self, api_channel, tool_agent, customer):
        message = send(api_channel, customer,
                       '[[tool:current_time {}]] [[tool:usage_report {"days": 1}]]')
        reply = agent_run(message.id)
        statuses = dict(ToolCall.objects.filter(message=message).values_list("name", "status"))
        assert statuses == {"current_time": "ok", "usage_report": "refused"}
        assert "Tool usage_report said: Error: the user is not permitted" in reply.text

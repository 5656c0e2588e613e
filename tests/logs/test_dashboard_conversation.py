"""A conversation's dashboard page: each model call with the tools it ran and the audit events
near it, read in a fixed number of queries."""
import csv
import io

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from apps.agents.runtime import agent_run
from tests.helpers import send

TIME_TOOL = 'time? [[tool:current_time {"timezone": "Asia/Shanghai"}]]'


@pytest.fixture
def staff_client(client, admin_user):
    client.force_login(admin_user)
    return client


def converse(channel, user, texts):
    first = send(channel, user, texts[0])
    agent_run(first.id)
    for text in texts[1:]:
        agent_run(send(channel, user, text, conversation_id=str(first.conversation_id)).id)
    return first.conversation_id


def call_sections(page: str) -> list[str]:
    """The HTML of each model call's block (its row, then its tool and audit rows)."""
    return [part.split("</tbody>")[0] for part in page.split('<tbody class="call"')[1:]]


@pytest.mark.django_db
def test_a_tool_shows_under_the_model_call_that_asked_for_it(staff_client, api_channel, tool_agent, customer):
    conversation_id = converse(api_channel, customer, [TIME_TOOL])
    response = staff_client.get(f"/dashboard/conversations/{conversation_id}/")
    assert response.status_code == 200
    asked, answered = response.context["tables"][1].rows
    assert [(t["name"], t["status"], t["step"]) for t in asked["tool_calls"]] == [("current_time", "ok", 1)]
    assert "Asia/Shanghai" in asked["tool_calls"][0]["arguments"]
    assert '"timezone": "Asia/Shanghai"' in asked["tool_calls"][0]["result"]
    assert answered["tool_calls"] == []
    first, second = call_sections(response.content.decode())
    assert 'data-tool="current_time"' in first and "Asia/Shanghai" in first
    assert 'class="tool"' not in second
    assert all(row["total_tokens"] > 0 and row["cost"] > 0 for row in (asked, answered))
    rows = list(csv.reader(io.StringIO(
        staff_client.get(f"/dashboard/conversations/{conversation_id}/?export=calls").content.decode())))
    tools_column = rows[0].index("Tools run")
    assert [r[tools_column] for r in rows[1:]] == ["current_time (ok)", ""]


@pytest.mark.django_db
def test_a_refused_tool_shows_its_status_and_the_audit_event_under_its_call(staff_client, api_channel,
                                                                           tool_agent, customer):
    conversation_id = converse(api_channel, customer, ['[[tool:block_user {"username": "x", "reason": "spam"}]]'])
    response = staff_client.get(f"/dashboard/conversations/{conversation_id}/")
    asked = response.context["tables"][1].rows[0]
    assert [(t["name"], t["status"]) for t in asked["tool_calls"]] == [("block_user", "refused")]
    assert "tool.refused" in [event["action"] for event in asked["audit"]]
    first = call_sections(response.content.decode())[0]
    assert 'data-tool="block_user"' in first and "refused" in first and "tool.refused" in first


@pytest.mark.django_db
def test_the_page_reads_in_the_same_number_of_queries_however_many_tool_calls(staff_client, api_channel,
                                                                              tool_agent, customer):
    def queries_for(texts) -> int:
        conversation_id = converse(api_channel, customer, texts)
        staff_client.get(f"/dashboard/conversations/{conversation_id}/")  # warms the session's caches
        with CaptureQueriesContext(connection) as captured:
            assert staff_client.get(f"/dashboard/conversations/{conversation_id}/").status_code == 200
        return len(captured)

    one = queries_for([TIME_TOOL])
    assert queries_for([TIME_TOOL, TIME_TOOL, "plain", TIME_TOOL]) == one


@pytest.mark.django_db
def test_a_persons_follow_up_costs_nothing(staff_client, api_channel, customer, make_user):
    """The agent answered, then a person followed up on the same message: the model call's cost
    shows once, on the agent's reply, also once that person's account is deleted."""
    from apps.conversations.models import Message
    from apps.identities.roles import Role
    from apps.routing.services import handoff_reply, handoff_start

    conversation_id = converse(api_channel, customer, ["hello"])
    conversation = Message.objects.get(conversation_id=conversation_id, direction="in").conversation
    sam = make_user(Role.ADMIN, is_staff=True)
    handoff_start(conversation=conversation, staff=sam)
    handoff_reply(conversation=conversation, staff=sam, text="Sam here, anything else?")
    for deleted in (False, True):
        if deleted:
            sam.delete()  # its replies keep no sender: still a person's
        rows = staff_client.get(f"/dashboard/conversations/{conversation_id}/").context["tables"][0].rows
        assert [(row["direction"], bool(row["cost"])) for row in rows if row["direction"] != "user"] == [
            ("agent", True), ("staff", False)]

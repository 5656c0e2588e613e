"""Permissions on real processes: Daphne, a Celery worker and fake_llm, from the refused side."""
import asyncio
import json

import pytest
import websockets

from apps.agents.models import Agent, LLMModel, Provider, ToolCall, Visibility
from apps.agents.services import tool_sync
from apps.connectors.models import Channel
from apps.identities.models import ApiKey
from apps.logs.models import AuditEvent
from devtools.stack import http, visitor_token

pytestmark = [pytest.mark.services, pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def live(services_stack, customer):
    provider = Provider.objects.create(slug="fake", name="Fake", base_url=services_stack.llm_url)
    model = LLMModel.objects.create(provider=provider, name="fake-gpt")
    agent = Agent.objects.create(slug="assistant", name="Assistant", model=model)
    agent.tools.set(tool_sync())
    internal = Agent.objects.create(slug="internal-helper", name="Internal helper", model=model,
                                    visibility=Visibility.INTERNAL)
    Channel.objects.create(slug="api", name="API", kind="api", default_agent=agent)
    Channel.objects.create(slug="web", name="Web chat", kind="webchat", default_agent=internal)
    _key, raw = ApiKey.generate(user=customer)
    services_stack.auth = {"Authorization": f"Bearer {raw}"}
    return services_stack


def test_worker_refuses_a_customers_employee_tool_call_and_audits_it(live, customer):
    status, body, _ = http("POST", f"{live.url}/api/v1/messages", {
        "message": 'list all refunds [[tool:search_conversations {"query": "refund"}]]', "wait": 30,
    }, live.auth)
    assert status == 200, body
    assert "not permitted" in body["reply"]["message"]
    call = ToolCall.objects.get(message_id=body["message_id"])
    assert call.status == "refused" and call.user_id == customer.pk
    event = AuditEvent.objects.get(action="tool.refused")
    assert event.actor_id == customer.pk and event.detail["message_id"] == body["message_id"]


def test_visitor_asking_an_internal_agent_over_the_socket_gets_an_error_frame(live):
    url = live.url.replace("http", "ws") + f"/ws/chat/web/?visitor={visitor_token(live.url, 'web')}"

    async def run():
        async with websockets.connect(url) as ws:
            await ws.send(json.dumps({"type": "message", "message": "hi", "client_id": "c-1"}))
            return json.loads(await asyncio.wait_for(ws.recv(), 30))

    frame = asyncio.run(run())
    assert frame["type"] == "error" and frame["code"] == "forbidden" and frame["client_id"] == "c-1"
    assert AuditEvent.objects.filter(action="agent.refused").count() == 1

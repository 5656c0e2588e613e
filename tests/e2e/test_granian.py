"""granian, for the HTTP doors only (docs/decisions/asgi-server.md), in front of the same worker,
PostgreSQL and Redis as the Daphne of the session stack: the messages API and the OpenAI face
answer the same, the client address is the peer's, and a websocket is not served there."""
from types import SimpleNamespace

import pytest

from apps.agents.models import Agent, LLMModel, Provider
from apps.connectors.models import Channel
from apps.identities.models import ApiKey
from apps.quotas.models import IpRule
from devtools.stack import http
from tests.helpers import face_answers

pytestmark = [pytest.mark.services, pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


@pytest.fixture(scope="module")
def granian_url(services_stack):
    process_count = len(services_stack.stack.processes)
    url = services_stack.stack.granian()
    yield url
    for process in services_stack.stack.processes[process_count:]:
        process.stop()


@pytest.fixture
def live(services_stack, granian_url, customer):
    provider = Provider.objects.create(slug="fake", name="Fake", base_url=services_stack.llm_url)
    model = LLMModel.objects.create(provider=provider, name="fake-gpt")
    agent = Agent.objects.create(slug="assistant", name="Assistant", model=model, system_prompt="Be brief.")
    api = Channel.objects.create(slug="api", name="API", kind="api", default_agent=agent)
    _key, raw = ApiKey.generate(user=customer)
    return SimpleNamespace(key=raw, auth={"Authorization": f"Bearer {raw}"}, url=granian_url, api_channel=api)


def test_messages_api_with_wait(live):
    status, body, _ = http("POST", f"{live.url}/api/v1/messages", {"message": "over granian", "wait": 30}, live.auth)
    assert status == 200, body
    assert body["reply"]["message"] == "Echo: over granian"


def test_openai_face_streamed_and_not(live):
    answer, chunks = face_answers(live.url, live.key)
    assert answer == "Echo: face"
    assert len([c for c in chunks if c]) > 1 and "".join(chunks) == "Echo: streamed"


def test_forwarded_for_does_not_change_the_client_address(live):
    def post(headers=None):
        return http("POST", f"{live.url}/api/v1/messages", {"message": "from where"},
                    {**live.auth, **(headers or {})})[:2]

    rule = IpRule.objects.create(action="deny", cidr="203.0.113.0/24", channel=live.api_channel)
    assert post({"X-Forwarded-For": "203.0.113.9"})[0] == 202
    rule.cidr = "127.0.0.0/8"
    rule.save()
    status, body = post({"X-Forwarded-For": "198.51.100.7"})
    assert status == 403 and body["error"]["code"] == "ip_forbidden"


def test_a_websocket_is_not_served_here(live):
    """--no-ws: the upgrade reaches the app as a plain GET, which no page answers."""
    status, _body, _ = http("GET", f"{live.url}/ws/chat/web/", None, {"Connection": "Upgrade", "Upgrade": "websocket",
                                                                     "Sec-WebSocket-Version": "13",
                                                                     "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="})
    assert status == 404

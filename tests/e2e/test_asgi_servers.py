"""The production image's server, uvicorn, and granian for the HTTP doors only
(docs/decisions/asgi-server.md), each in front of the same worker, PostgreSQL and Redis as the
Daphne of the session stack: every door they serve answers the same, and the client address is
the peer's."""
from types import SimpleNamespace

import pytest

from apps.agents.models import Agent, LLMModel, Provider
from apps.connectors.models import Channel
from apps.identities.models import ApiKey
from apps.quotas.models import IpRule
from devtools.stack import http
from tests.e2e.test_services import web_chat
from tests.helpers import face_answers

pytestmark = [pytest.mark.services, pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def serving(services_stack, server: str):
    process_count = len(services_stack.stack.processes)
    url = getattr(services_stack.stack, server)()
    yield url
    for process in services_stack.stack.processes[process_count:]:
        process.stop()


@pytest.fixture(scope="module", params=["uvicorn", "granian"])
def server_url(services_stack, request):
    yield from serving(services_stack, request.param)


@pytest.fixture(scope="module")
def uvicorn_url(services_stack):
    yield from serving(services_stack, "uvicorn")


@pytest.fixture(scope="module")
def granian_url(services_stack):
    yield from serving(services_stack, "granian")


def live_on(services_stack, url, customer):
    provider = Provider.objects.create(slug="fake", name="Fake", base_url=services_stack.llm_url)
    model = LLMModel.objects.create(provider=provider, name="fake-gpt")
    agent = Agent.objects.create(slug="assistant", name="Assistant", model=model, system_prompt="Be brief.")
    api = Channel.objects.create(slug="api", name="API", kind="api", default_agent=agent)
    Channel.objects.create(slug="web", name="Web chat", kind="webchat", default_agent=agent)
    _key, raw = ApiKey.generate(user=customer)
    # A copy: the session's stack keeps its Daphne URL for the e2e modules that run after this one.
    return SimpleNamespace(**{**vars(services_stack), "key": raw, "auth": {"Authorization": f"Bearer {raw}"},
                              "url": url, "api_channel": api})


@pytest.fixture
def live(services_stack, server_url, customer):
    return live_on(services_stack, server_url, customer)


@pytest.fixture
def live_uvicorn(services_stack, uvicorn_url, customer):
    return live_on(services_stack, uvicorn_url, customer)


def test_messages_api_with_wait(live):
    status, body, _ = http("POST", f"{live.url}/api/v1/messages", {"message": "over it", "wait": 30}, live.auth)
    assert status == 200, body
    assert body["reply"]["message"] == "Echo: over it"


def test_openai_face_streamed_and_not(live):
    answer, chunks = face_answers(live.url, live.key)
    assert answer == "Echo: face"
    assert len([c for c in chunks if c]) > 1 and "".join(chunks) == "Echo: streamed"


def test_web_chat_socket(live_uvicorn):
    frames = web_chat(live_uvicorn, [{"type": "message", "message": "socket [[slow:0.01]]", "client_id": "u-1"}])
    assert frames[0]["type"] == "ack"
    assert len([f for f in frames if f["type"] == "delta"]) > 1
    assert frames[-1]["type"] == "reply" and frames[-1]["message"] == "Echo: socket"


def test_forwarded_for_does_not_change_the_client_address(live):
    """uvicorn would take X-Forwarded-For from a loopback peer as the client (its default; granian
    reads none); the gateway's own rule (GATEWAY_TRUSTED_PROXIES, empty here) decides instead, so a
    header naming a denied network changes nothing, while a rule on the real peer's address refuses."""
    def post(headers=None):
        # With wait: the run is over when the test ends, not racing its teardown's TRUNCATE.
        return http("POST", f"{live.url}/api/v1/messages", {"message": "from where", "wait": 30},
                    {**live.auth, **(headers or {})})[:2]

    rule = IpRule.objects.create(action="deny", cidr="203.0.113.0/24", channel=live.api_channel)
    assert post({"X-Forwarded-For": "203.0.113.9"})[0] == 200
    rule.cidr = "127.0.0.0/8"
    rule.save()
    status, body = post({"X-Forwarded-For": "198.51.100.7"})
    assert status == 403 and body["error"]["code"] == "ip_forbidden"


def test_granian_serves_no_websocket(granian_url):
    """--no-ws: the upgrade reaches the app as a plain GET, which no page answers."""
    status, _body, _ = http("GET", f"{granian_url}/ws/chat/web/", None, {
        "Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="})
    assert status == 404

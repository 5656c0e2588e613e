"""The services stack with a gevent worker (``celery worker -P gevent``): every way of waiting for a
reply (API ``wait``, the OpenAI face streamed and not, the web chat) is answered, and one worker
process holds many runs in flight at once."""
import asyncio
import json
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import pytest
import websockets

from apps.agents.models import Agent, LLMModel, Provider
from apps.connectors.models import Channel
from apps.conversations.models import Direction, Message
from apps.identities.models import ApiKey
from devtools.stack import Stack, base_env, database_url, http, visitor_token
from tests.helpers import face_answers

pytestmark = [pytest.mark.services, pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


@pytest.fixture(scope="module")
def gevent_stack(django_db_setup, django_db_blocker):
    from django.conf import settings

    stack = Stack(base_env(
        DATABASE_URL=database_url(settings.DATABASES["default"]), REDIS_URL=settings.REDIS_URL,
        GATEWAY_AGENT_QUEUE="e2e-gevent",
    ))
    try:
        llm_url = stack.fake_llm()
        stack.worker(concurrency=200, pool="gevent")
        url = stack.daphne()
        yield SimpleNamespace(stack=stack, url=url, llm_url=llm_url)
    except Exception:
        print(stack.logs())
        raise
    finally:
        stack.stop()


@pytest.fixture
def live(gevent_stack, customer):
    provider = Provider.objects.create(slug="fake", name="Fake", base_url=gevent_stack.llm_url)
    model = LLMModel.objects.create(provider=provider, name="fake-gpt")
    agent = Agent.objects.create(slug="assistant", name="Assistant", model=model, system_prompt="Be brief.")
    Channel.objects.create(slug="api", name="API", kind="api", default_agent=agent)
    Channel.objects.create(slug="web", name="Web chat", kind="webchat", default_agent=agent)
    _key, raw = ApiKey.generate(user=customer)
    gevent_stack.key = raw
    gevent_stack.auth = {"Authorization": f"Bearer {raw}"}
    return gevent_stack


def test_api_wait_is_answered_by_a_gevent_worker(live):
    status, body, _ = http("POST", f"{live.url}/api/v1/messages", {"message": "hello gevent", "wait": 30}, live.auth)
    assert status == 200, (body, live.stack.logs())
    assert body["reply"]["message"] == "Echo: hello gevent"


def test_face_streamed_and_not_through_a_gevent_worker(live):
    answer, chunks = face_answers(live.url, live.key)
    assert answer == "Echo: face"
    assert len([c for c in chunks if c]) > 1 and "".join(chunks) == "Echo: streamed"


def test_web_chat_streams_through_a_gevent_worker(live):
    ws_url = live.url.replace("http", "ws") + f"/ws/chat/web/?visitor={visitor_token(live.url, 'web')}"

    async def run():
        received = []
        async with websockets.connect(ws_url) as ws:
            await ws.send(json.dumps({"type": "message", "message": "stream it [[slow:0.01]]", "client_id": "g-1"}))
            while not received or received[-1]["type"] not in ("reply", "error"):
                received.append(json.loads(await asyncio.wait_for(ws.recv(), 30)))
        return received

    frames = asyncio.run(run())
    assert frames[0]["type"] == "ack"
    deltas = [f["delta"] for f in frames if f["type"] == "delta"]
    assert len(deltas) > 1 and frames[-1]["type"] == "reply"
    assert "".join(deltas) == frames[-1]["message"] == "Echo: stream it"


def test_many_runs_in_flight_on_one_gevent_worker(live):
    """40 waiting requests whose model answers slowly are all answered, each exactly once."""
    def ask(i):
        return http("POST", f"{live.url}/api/v1/messages",
                    {"message": f"in flight {i} [[slow:0.05]]", "wait": 60}, live.auth, timeout=90)

    with ThreadPoolExecutor(40) as pool:
        results = list(pool.map(ask, range(40)))
    assert [status for status, _b, _h in results] == [200] * 40, results
    assert sorted(body["reply"]["message"] for _s, body, _h in results) == sorted(
        f"Echo: in flight {i}" for i in range(40))
    assert Message.objects.filter(direction=Direction.OUTBOUND).count() == 40

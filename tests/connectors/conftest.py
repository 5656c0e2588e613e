"""Connector fixtures: the local platform servers and one channel of each kind."""
from __future__ import annotations

import uuid

import pytest
from django.core.cache import cache

from apps.connectors.models import Channel
from apps.logs.request_log import request_buffer
from devtools.fake_platforms import FakePlatforms
from tests.connectors.connector_helpers import CRM_SECRET, SLACK_BOT_USER, SLACK_SECRET, WECOM


@pytest.fixture(scope="session")
def platforms_server():
    server = FakePlatforms()
    server.start_in_thread()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def empty_request_buffer():
    """Start from an empty request-log buffer (a shared Redis list in services mode): an earlier
    test's refusal flushed in this test's batch could be the one of its kind that is audited."""
    buffer = request_buffer()
    buffer.discard(len(buffer))


@pytest.fixture
def platforms(platforms_server, settings):
    """The local Slack / WeCom / CRM servers, fresh for each test, and settings pointing at them."""
    platforms_server.reset()
    settings.SLACK_API_BASE_URL = platforms_server.slack_base_url
    settings.WECOM_API_BASE_URL = platforms_server.wecom_base_url
    settings.CONNECTOR_SEND_BACKOFF_SECONDS = 0.01
    cache.delete(f"wecom:access_token:{WECOM['corp_id']}:{WECOM['agent_id']}")
    return platforms_server


def make_channel(kind: str, agent, *, config: dict | None = None, secrets: dict | None = None, slug=None):
    channel = Channel(slug=slug or kind.replace("_", "-"), name=kind, kind=kind, default_agent=agent,
                      config=config or {})
    channel.set_secrets(**(secrets or {}))
    channel.save()
    return channel


@pytest.fixture
def slack_channel(agent):
    return make_channel("slack", agent, config={"bot_user_id": SLACK_BOT_USER},
                        secrets={"signing_secret": SLACK_SECRET, "bot_token": "xoxb-test-bot-token"})


@pytest.fixture
def wecom_channel(agent):
    return make_channel("wecom", agent, config={"corp_id": WECOM["corp_id"], "agent_id": WECOM["agent_id"]},
                        secrets={k: WECOM[k] for k in ("token", "encoding_aes_key", "secret")})


@pytest.fixture
def crm_channel(agent, platforms):
    return make_channel("crm", agent, config={
        "callback_url": platforms.crm_callback_url,
        "field_map": {"user_id": "contact.id", "message": "body.text", "external_id": "event.id",
                      "timestamp": "event.created"},
    }, secrets={"secret": CRM_SECRET})


@pytest.fixture
def robot_channel(agent):
    return make_channel("wecom_robot", agent, secrets={"webhook_key": f"robot-{uuid.uuid4()}"})

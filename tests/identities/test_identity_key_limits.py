"""An API key's limits, from the holder's side: its agent scope names no agent it may not use, and
an expiry is a real one.

A key limited to some agents (given to an integration, say) must not tell its holder which other
agents its owner may use: on the face, one outside the scope is the same 404 as a missing one."""
import pytest
from django.core.management import CommandError, call_command
from rest_framework.test import APIClient

from apps.agents.models import Agent, Visibility
from apps.identities.models import ApiKey
from apps.identities.services import api_key_create
from apps.logs.models import AuditEvent

pytestmark = pytest.mark.django_db

FACE = "/v1/chat/completions"
SECRET_NAME = "Payroll bot (Q3 layoffs)"


@pytest.fixture
def other_agent(llm_model):
    """An agent the key's owner may use, outside the key's scope."""
    return Agent.objects.create(slug="payroll", name=SECRET_NAME, model=llm_model, visibility=Visibility.PUBLIC)


@pytest.fixture
def scoped_client(customer, api_channel, agent, other_agent):
    _key, raw = api_key_create(user=customer, actor=None, agents=[agent])
    client = APIClient(REMOTE_ADDR="192.0.2.40")
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    return client


def ask(client, model: str):
    return client.post(FACE, {"model": model, "messages": [{"role": "user", "content": "hi"}]}, format="json")


def test_the_face_answers_an_agent_outside_the_keys_scope_as_a_missing_one(scoped_client, customer, other_agent):
    outside, missing = ask(scoped_client, "payroll"), ask(scoped_client, "no-such-agent")
    assert (outside.status_code, missing.status_code) == (404, 404)
    assert outside.json()["error"]["code"] == missing.json()["error"]["code"] == "model_not_found"
    assert outside.json()["error"]["message"] == missing.json()["error"]["message"].replace("no-such-agent", "payroll")
    assert SECRET_NAME not in outside.content.decode()
    # Still a refusal of the key's scope to whoever reads the audit log.
    event = AuditEvent.objects.get(action="agent.refused")
    assert (event.actor, event.target_id, event.detail["reason"], event.client_ip) == (
        customer, str(other_agent.pk), "key_scope", "192.0.2.40")


def test_a_routed_agent_outside_the_keys_scope_is_refused_without_its_name(customer, api_channel, other_agent):
    api_channel.default_agent = other_agent
    api_channel.save()
    _key, raw = api_key_create(user=customer, actor=None, agents=[Agent.objects.get(slug="assistant")])
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    response = client.post("/api/v1/messages", {"message": "hi"}, format="json")
    assert response.status_code == 403 and response.json()["error"]["code"] == "forbidden"
    assert SECRET_NAME not in response.content.decode()


@pytest.mark.parametrize("days", ["0", "-3"])
def test_create_api_key_refuses_an_expiry_that_is_not_in_the_future(customer, days):
    with pytest.raises(CommandError, match="--expires-days"):
        call_command("create_api_key", customer.username, "--expires-days", days)
    assert not ApiKey.objects.exists()

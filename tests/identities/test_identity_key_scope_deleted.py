"""A key's scope names agents or channels; an empty scope means "any". Deleting the only one a key
names must not widen it to every agent or channel its owner may use."""
import pytest
from rest_framework.test import APIClient

from apps.agents.models import Agent
from apps.connectors.models import Channel
from apps.identities.models import ApiKey
from apps.identities.services import api_key_create
from apps.logs.models import AuditEvent

pytestmark = pytest.mark.django_db


def bearer(raw: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    return client


def ask(raw: str) -> int:
    return bearer(raw).post("/api/v1/messages", {"message": "hi"}, format="json").status_code


def test_deleting_the_only_agent_a_key_names_revokes_the_key(api_channel, customer, llm_model, agent):
    sales = Agent.objects.create(slug="sales", name="Sales", model=llm_model)
    support = Agent.objects.create(slug="support", name="Support", model=llm_model)
    only_sales, only_sales_raw = api_key_create(user=customer, actor=None, agents=[sales])
    both, both_raw = api_key_create(user=customer, actor=None, agents=[sales, support])
    assert ask(only_sales_raw) == 403  # the channel's agent is not in its scope
    sales.delete()
    assert ask(only_sales_raw) == 401 and ApiKey.objects.get(pk=only_sales.pk).revoked_at is not None
    event = AuditEvent.objects.get(action="apikey.revoked", target_id=str(only_sales.pk))
    assert event.detail["reason"] == "its whole agents scope was deleted"
    # A key naming another agent too keeps that one, and only that one.
    both = ApiKey.objects.get(pk=both.pk)
    assert both.revoked_at is None and list(both.agents.all()) == [support]
    assert ask(both_raw) == 403


def test_deleting_the_only_channel_a_key_names_revokes_the_key(api_channel, agent, customer):
    other = Channel.objects.create(slug="partner-api", name="Partner API", kind="api", default_agent=agent)
    key, raw = api_key_create(user=customer, actor=None, channels=[other])
    assert ask(raw) == 403
    other.delete()
    assert ask(raw) == 401 and ApiKey.objects.get(pk=key.pk).revoked_at is not None


def test_deleting_a_keys_whole_scope_at_once_revokes_it(api_channel, agent, customer, llm_model):
    """One deletion of every agent (or channel) a key names, as the admin's bulk action does."""
    sales = Agent.objects.create(slug="sales", name="Sales", model=llm_model)
    support = Agent.objects.create(slug="support", name="Support", model=llm_model)
    by_agents, agents_raw = api_key_create(user=customer, actor=None, agents=[sales, support])
    partners = [Channel.objects.create(slug=f"partner-{n}", name=f"Partner {n}", kind="api", default_agent=agent)
                for n in (1, 2)]
    by_channels, channels_raw = api_key_create(user=customer, actor=None, channels=partners)
    Agent.objects.filter(pk__in=[sales.pk, support.pk]).delete()
    Channel.objects.filter(pk__in=[c.pk for c in partners]).delete()
    assert ask(agents_raw) == 401 and ask(channels_raw) == 401
    assert not ApiKey.objects.filter(pk__in=[by_agents.pk, by_channels.pk], revoked_at__isnull=True).exists()

"""Who may speak: the pipeline's identify and authorize steps and the HTTP API, from the refused side.

Every refusal is a clear GatewayError (or 4xx body) and an audit event, and nothing is stored or queued.
"""
from datetime import timedelta

import pytest
from django.utils import timezone
from guardian.shortcuts import assign_perm
from rest_framework.test import APIClient

from apps.agents.models import Agent, Visibility
from apps.connectors.models import Channel
from apps.conversations import pipeline
from apps.conversations.models import Message
from apps.conversations.normalized import NormalizedMessage
from apps.core.errors import Forbidden
from apps.identities.access import AGENT_REFUSED, Blocked, UnknownSender
from apps.identities.models import ApiKey, ChannelIdentity, User
from apps.identities.services import api_key_create, user_block
from apps.logs.models import AuditEvent

URL = "/api/v1/messages"


def normalized(channel, text="hello", **fields):
    return NormalizedMessage(channel=channel.kind, channel_id=channel.slug,
                             user_id=fields.pop("user_id", "u-1"), message=text, **fields)


@pytest.fixture
def internal_agent(llm_model):
    return Agent.objects.create(slug="internal-helper", name="Internal helper", model=llm_model,
                                visibility=Visibility.INTERNAL)


@pytest.fixture
def crm_channel(agent):
    """A channel whose senders are known by identity (not by API key or session)."""
    return Channel.objects.create(slug="crm", name="CRM", kind="api", default_agent=agent)


def bearer(raw_key):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw_key}")
    return client


def last_audit(action):
    return AuditEvent.objects.filter(action=action).order_by("-created_at").first()


@pytest.mark.django_db
class TestUnknownSenders:
    def test_refusing_channel_answers_politely_audits_and_creates_nobody(self, crm_channel, roles):
        crm_channel.unknown_senders = "refuse"
        crm_channel.refusal_message = "Sorry, we only chat with registered clients. Call us at 555-0100."
        crm_channel.save()
        users_before = User.objects.count()
        with pytest.raises(UnknownSender) as refused:
            pipeline.accept(normalized(crm_channel, user_id="stranger-1"), channel=crm_channel,
                            client_ip="203.0.113.9")
        assert refused.value.status == 403 and refused.value.code == "unknown_sender"
        assert refused.value.message == "Sorry, we only chat with registered clients. Call us at 555-0100."
        assert User.objects.count() == users_before
        assert not ChannelIdentity.objects.exists() and not Message.objects.exists()
        event = last_audit("sender.refused")
        assert event.target_id == str(crm_channel.pk) and event.detail["external_id"] == "stranger-1"
        assert event.client_ip == "203.0.113.9"

    def test_refusing_channel_without_a_text_uses_a_polite_default(self, crm_channel, roles):
        crm_channel.unknown_senders = "refuse"
        with pytest.raises(UnknownSender) as refused:
            pipeline.accept(normalized(crm_channel, user_id="stranger-2"), channel=crm_channel)
        assert refused.value.message.startswith("Sorry")

    def test_refusing_channel_still_answers_a_known_identity(self, crm_channel, customer):
        ChannelIdentity.objects.create(channel=crm_channel, external_id="known-1", user=customer)
        crm_channel.unknown_senders = "refuse"
        accepted = pipeline.accept(normalized(crm_channel, user_id="known-1"), channel=crm_channel)
        assert accepted.message.sender == customer

    def test_verified_email_links_to_the_existing_user_when_enabled(self, crm_channel, employee, settings):
        settings.IDENTITY_LINK_VERIFIED_EMAIL = True
        employee.email = "Ada@Example.com"
        employee.save()
        accepted = pipeline.accept(
            normalized(crm_channel, user_id="U42", metadata={"verified_email": "ada@example.com"}),
            channel=crm_channel)
        assert accepted.message.sender == employee
        assert ChannelIdentity.objects.get(external_id="U42").user == employee
        assert last_audit("identity.linked").detail["reason"] == "verified_email"

    def test_verified_email_is_ignored_when_the_rule_is_off(self, crm_channel, employee, settings):
        settings.IDENTITY_LINK_VERIFIED_EMAIL = False
        employee.email = "ada@example.com"
        employee.save()
        accepted = pipeline.accept(
            normalized(crm_channel, user_id="U43", metadata={"verified_email": "ada@example.com"}),
            channel=crm_channel)
        assert accepted.message.sender != employee and accepted.message.sender.role == "customer"

    def test_an_email_shared_by_two_users_links_nobody(self, crm_channel, customer, employee, settings):
        settings.IDENTITY_LINK_VERIFIED_EMAIL = True
        User.objects.filter(pk__in=[customer.pk, employee.pk]).update(email="shared@example.com")
        accepted = pipeline.accept(
            normalized(crm_channel, user_id="U44", metadata={"verified_email": "shared@example.com"}),
            channel=crm_channel)
        assert accepted.message.sender not in (customer, employee)

    def test_refusing_channel_refuses_an_email_it_cannot_link(self, crm_channel, roles, settings):
        settings.IDENTITY_LINK_VERIFIED_EMAIL = True
        crm_channel.unknown_senders = "refuse"
        with pytest.raises(UnknownSender):
            pipeline.accept(normalized(crm_channel, user_id="U45", metadata={"verified_email": "nobody@x.org"}),
                            channel=crm_channel)


@pytest.mark.django_db
class TestPipelineRefusals:
    def test_blocked_user_is_refused_and_audited(self, api_channel, employee):
        employee.blocked_at = timezone.now()
        with pytest.raises(Blocked) as refused:
            pipeline.accept(normalized(api_channel), channel=api_channel, principal=employee)
        assert refused.value.code == "blocked" and refused.value.status == 403
        assert not Message.objects.exists()
        event = last_audit("user.refused")
        assert event.actor == employee and event.detail["reason"] == "blocked"

    def test_blocked_identity_is_refused_on_a_channel_without_principal(self, crm_channel, customer):
        ChannelIdentity.objects.create(channel=crm_channel, external_id="known-2", user=customer)
        User.objects.filter(pk=customer.pk).update(blocked_at=timezone.now())
        with pytest.raises(Blocked):
            pipeline.accept(normalized(crm_channel, user_id="known-2"), channel=crm_channel)

    def test_customer_routed_to_an_internal_agent_is_refused(self, api_channel, customer, internal_agent):
        api_channel.default_agent = internal_agent
        with pytest.raises(Forbidden) as refused:
            pipeline.accept(normalized(api_channel), channel=api_channel, principal=customer)
        assert "Internal helper" not in refused.value.message and "internal" not in refused.value.message
        assert not Message.objects.exists()
        event = last_audit("agent.refused")
        assert event.actor == customer and event.target_id == str(internal_agent.pk)
        assert event.detail["reason"] == "permission"

    def test_outsider_may_not_use_even_a_public_agent(self, api_channel, outsider):
        with pytest.raises(Forbidden):
            pipeline.accept(normalized(api_channel), channel=api_channel, principal=outsider)

    def test_customer_granted_the_internal_agent_is_accepted(self, api_channel, customer, internal_agent):
        api_channel.default_agent = internal_agent
        assign_perm("agents.use_agent", customer, internal_agent)
        customer = User.objects.get(pk=customer.pk)
        assert pipeline.accept(normalized(api_channel), channel=api_channel, principal=customer).message.agent \
            == internal_agent

    def test_employee_reaches_the_internal_agent(self, api_channel, employee, internal_agent):
        api_channel.default_agent = internal_agent
        pipeline.accept(normalized(api_channel), channel=api_channel, principal=employee)

    def test_internal_channel_refuses_a_customer(self, customer, agent):
        staff_api = Channel.objects.create(slug="staff-api", name="Staff API", kind="api", default_agent=agent,
                                           visibility=Visibility.INTERNAL)
        with pytest.raises(Forbidden):
            pipeline.accept(normalized(staff_api), channel=staff_api, principal=customer)
        assert last_audit("channel.refused").detail["reason"] == "permission"


@pytest.mark.django_db
class TestApiKeyScopes:
    def test_key_scoped_to_another_channel_is_refused(self, api_channel, crm_channel, customer):
        key, _raw = api_key_create(user=customer, actor=None, channels=[crm_channel])
        with pytest.raises(Forbidden) as refused:
            pipeline.accept(normalized(api_channel), channel=api_channel, principal=customer, api_key=key)
        assert "API key" in refused.value.message
        assert last_audit("channel.refused").detail["reason"] == "key_scope"

    def test_key_scoped_to_another_agent_is_refused(self, api_channel, customer, llm_model):
        other = Agent.objects.create(slug="other", name="Other", model=llm_model)
        key, _raw = api_key_create(user=customer, actor=None, agents=[other])
        with pytest.raises(Forbidden):
            pipeline.accept(normalized(api_channel), channel=api_channel, principal=customer, api_key=key)
        event = last_audit("agent.refused")
        assert event.detail["reason"] == "key_scope" and event.detail["api_key"] == key.prefix

    def test_key_scope_never_widens_the_owners_rights(self, api_channel, customer, internal_agent):
        api_channel.default_agent = internal_agent
        key, _raw = api_key_create(user=customer, actor=None, agents=[internal_agent])
        with pytest.raises(Forbidden):
            pipeline.accept(normalized(api_channel), channel=api_channel, principal=customer, api_key=key)

    def test_key_in_scope_is_accepted(self, api_channel, customer, agent):
        key, _raw = api_key_create(user=customer, actor=None, channels=[api_channel], agents=[agent])
        pipeline.accept(normalized(api_channel), channel=api_channel, principal=customer, api_key=key)


@pytest.mark.django_db
class TestOverHttp:
    def test_blocked_users_key_gets_403_blocked_on_every_endpoint(self, api_channel, customer, api_key_for):
        client = bearer(api_key_for(customer))
        conversation_id = client.post(URL, {"message": "before"}, format="json").json()["conversation_id"]
        user_block(user=User.objects.get(pk=customer.pk), actor=None, reason="abuse")  # as staff do
        response = client.post(URL, {"message": "after"}, format="json")  # the key's user is kept per process
        assert response.status_code == 403 and response.json()["error"]["code"] == "blocked"
        response = client.get(f"/api/v1/conversations/{conversation_id}/messages")
        assert response.status_code == 403 and response.json()["error"]["code"] == "blocked"
        assert Message.objects.count() == 1
        # The second is the same refusal within the minute: in the request log only.
        assert AuditEvent.objects.filter(action="user.refused", actor=customer).count() == 1

    def test_customer_asking_an_internal_agent_gets_403(self, api_channel, customer, internal_agent, api_key_for):
        api_channel.default_agent = internal_agent
        api_channel.save()
        response = bearer(api_key_for(customer)).post(URL, {"message": "hi"}, format="json",
                                                      REMOTE_ADDR="198.51.100.7")
        assert response.status_code == 403
        assert response.json()["error"] == {"code": "forbidden",
                                            "message": AGENT_REFUSED}
        assert not Message.objects.exists()
        assert last_audit("agent.refused").actor == customer

    def test_key_scoped_elsewhere_gets_403(self, api_channel, crm_channel, customer):
        _key, raw = api_key_create(user=customer, actor=None, channels=[crm_channel])
        response = bearer(raw).post(URL, {"message": "hi"}, format="json")
        assert response.status_code == 403 and "API key" in response.json()["error"]["message"]

    def test_a_key_scoped_elsewhere_reads_nothing_either(self, api_channel, crm_channel, customer, api_key_for):
        conversation_id = bearer(api_key_for(customer)).post(URL, {"message": "mine"}, format="json").json()[
            "conversation_id"]
        _key, raw = api_key_create(user=customer, actor=None, channels=[crm_channel])
        for path in (f"/api/v1/conversations/{conversation_id}/messages", "/api/v1/usage", "/v1/models"):
            response = bearer(raw).get(path)
            assert response.status_code == 403, path
            assert "API key" in response.json()["error"]["message"]

    def test_a_key_scoped_to_some_agents_reads_only_conversations_with_them(
            self, api_channel, customer, agent, llm_model, api_key_for):
        other = Agent.objects.create(slug="other", name="Other", model=llm_model)
        own = bearer(api_key_for(customer)).post(URL, {"message": "to the default"}, format="json").json()
        _key, raw = api_key_create(user=customer, actor=None, agents=[other])
        assert bearer(raw).get(f"/api/v1/conversations/{own['conversation_id']}/messages").status_code == 404
        _key, raw = api_key_create(user=customer, actor=None, agents=[agent])
        assert bearer(raw).get(f"/api/v1/conversations/{own['conversation_id']}/messages").status_code == 200

    def test_a_resend_is_vetted_like_a_request(self, api_channel, crm_channel, customer, llm_model, api_key_for,
                                               settings):
        """The same Idempotency-Key again: the key it comes with must reach the channel and the
        message's agent, and it counts against the request rates."""
        settings.GATEWAY_USER_RATE = "5/m"
        sent = bearer(api_key_for(customer)).post(URL, {"message": "pay"}, format="json",
                                                  HTTP_IDEMPOTENCY_KEY="k-1").json()
        other = Agent.objects.create(slug="other", name="Other", model=llm_model)
        for scope in ({"channels": [crm_channel]}, {"agents": [other]}):
            _key, raw = api_key_create(user=customer, actor=None, **scope)
            response = bearer(raw).post(URL, {"message": "pay"}, format="json", HTTP_IDEMPOTENCY_KEY="k-1")
            assert response.status_code == 403 and "message_id" not in response.json(), scope
        client = bearer(api_key_for(customer))  # counted so far: the first request, the agent-scoped resend
        statuses = [client.post(URL, {"message": "pay"}, format="json", HTTP_IDEMPOTENCY_KEY="k-1").status_code
                    for _ in range(4)]
        assert statuses == [202, 202, 202, 429]
        assert client.post(URL, {"message": "pay"}, format="json", HTTP_IDEMPOTENCY_KEY="k-1").json()[
            "error"]["code"] == "rate_limited"
        assert Message.objects.filter(pk=sent["message_id"]).count() == Message.objects.count() == 1

    def test_revoked_and_expired_keys_get_401(self, api_channel, customer):
        key, raw = api_key_create(user=customer, actor=None)
        ApiKey.objects.filter(pk=key.pk).update(revoked_at=timezone.now())
        assert bearer(raw).post(URL, {"message": "x"}, format="json").status_code == 401
        key, raw = api_key_create(user=customer, actor=None, expires_at=timezone.now() - timedelta(seconds=1))
        assert bearer(raw).post(URL, {"message": "x"}, format="json").status_code == 401

    def test_use_records_last_used_time(self, api_channel, customer):
        key, raw = api_key_create(user=customer, actor=None)
        assert key.last_used_at is None
        bearer(raw).post(URL, {"message": "x"}, format="json")
        key.refresh_from_db()
        assert key.last_used_at is not None


@pytest.mark.django_db
def test_create_api_key_command_prints_a_scoped_expiring_key_once(customer, api_channel, agent, capsys):
    from django.core.management import call_command

    call_command("create_api_key", customer.username, "--name", "ci", "--expires-days", "7",
                 "--channel", "api", "--agent", agent.slug)
    raw = capsys.readouterr().out.strip()
    key = ApiKey.objects.get(name="ci")
    assert raw.startswith(f"gw_{key.prefix}_") and raw not in key.key_hash
    assert key.expires_at > timezone.now() + timedelta(days=6)
    assert list(key.channels.all()) == [api_channel] and list(key.agents.all()) == [agent]
    assert last_audit("apikey.created").after["channels"] == ["api"]

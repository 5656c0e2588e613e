"""What the admin offers to pick, filter by or delete along names no channel, agent or tool the
staff member may not use (apps/identities/scoped_pickers.py); superusers see them all."""
import pytest
from django.contrib import admin
from django.contrib.auth.models import Permission

from apps.agents.models import Agent, AgentFallback, LLMModel
from apps.connectors.models import Channel
from apps.conversations.models import Conversation
from apps.identities.models import ApiKey
from apps.identities.roles import Role
from apps.identities.scoped_pickers import SCOPED, UsablePickers
from apps.logs.models import AuditEvent
from apps.routing.models import Route

pytestmark = pytest.mark.django_db

SECRETS = ("Secret ops", "VIP desk", "Vault LLM")  # the hidden agent, channel, and the agent's provider


def desk_member(make_user, *codenames):
    """Staff limited to what an employee may use, with these permissions."""
    user = make_user(Role.EMPLOYEE, is_staff=True)
    user.user_permissions.add(*Permission.objects.filter(codename__in=codenames))
    return user


def superuser(make_user):
    return make_user(None, is_staff=True, is_superuser=True)


def page(client, url: str) -> str:
    response = client.get(url)
    assert response.status_code == 200, url
    return response.content.decode()


def assert_names_none(text: str, where: str) -> None:
    for secret in SECRETS:
        assert secret not in text, (secret, where)


CHANGELISTS = ("/admin/routing/route/", "/admin/conversations/conversation/", "/admin/conversations/message/",
               "/admin/logs/llmcall/", "/admin/identities/channelidentity/", "/admin/identities/apikey/",
               "/admin/quotas/iprule/", "/admin/quotas/usagedaily/", "/admin/agents/agent/")


def test_list_filters_name_only_channels_and_agents_she_may_use(client, make_user, agent, webchat_channel,
                                                                 api_channel, llm_model, hidden):
    Agent.objects.create(slug="helper", name="Helper", model=llm_model)  # two agents: a filter to show
    client.force_login(desk_member(make_user, "view_route", "view_conversation", "view_message", "view_llmcall",
                                   "view_channelidentity", "view_apikey", "view_iprule", "view_usagedaily",
                                   "view_agent"))
    for url in CHANGELISTS:
        assert_names_none(page(client, url), url)
    routes = client.get("/admin/routing/route/").context["cl"]
    offered = {spec.title: [label for _, label in spec.lookup_choices] for spec in routes.filter_specs
               if hasattr(spec, "lookup_choices")}
    assert offered["channel"] == ["API (api)", "Web chat (webchat)"] and offered["agent"] == ["Assistant", "Helper"]
    # A hidden channel asked for by its id filters down to nothing, and names nothing.
    filtered = page(client, f"/admin/routing/route/?channel__id__exact={hidden[1].pk}")
    assert_names_none(filtered, "filtered by the hidden channel")
    client.force_login(superuser(make_user))
    assert all(secret in page(client, "/admin/routing/route/") for secret in ("Secret ops", "VIP desk"))
    assert "Vault LLM" in page(client, "/admin/agents/agent/")


def test_form_choices_and_autocomplete_offer_only_what_she_may_use(client, make_user, agent, webchat_channel,
                                                                    tools, hidden):
    """A channel's default agent, a route's agent and channel, a quota policy's or IP rule's channel,
    a key's scope, an identity's channel, an agent's tools, a conversation's agent."""
    talk = Conversation.objects.create(channel=webchat_channel, user=make_user(Role.CUSTOMER), agent=agent)
    client.force_login(desk_member(
        make_user, "view_channel", "change_channel", "view_route", "add_route", "view_quotapolicy",
        "add_quotapolicy", "view_iprule", "add_iprule", "view_apikey", "add_apikey", "view_channelidentity",
        "add_channelidentity", "view_agent", "change_agent", "view_conversation", "change_conversation"))
    for url in (f"/admin/connectors/channel/{webchat_channel.pk}/change/", "/admin/routing/route/add/",
                "/admin/quotas/quotapolicy/add/", "/admin/quotas/iprule/add/", "/admin/identities/apikey/add/",
                "/admin/identities/channelidentity/add/", f"/admin/conversations/conversation/{talk.pk}/change/"):
        assert_names_none(page(client, url), url)
    tools_offered = page(client, f"/admin/agents/agent/{agent.pk}/change/")
    assert "search_conversations" in tools_offered and "block_user" not in tools_offered  # an admin-only tool
    for field in ("agent", "channel"):
        found = client.get("/admin/autocomplete/", {"app_label": "routing", "model_name": "route",
                                                    "field_name": field, "term": ""})
        assert found.status_code == 200
        assert_names_none(found.content.decode(), f"autocomplete of a route's {field}")
        assert found.json()["results"], field
    client.force_login(superuser(make_user))
    assert "Secret ops" in page(client, "/admin/routing/route/add/")


def route_form(**fields):
    return {"name": "to the back office", "priority": "5", "agent": "", "channel": "", "channel_kind": "",
            "sender_role": "", "sender_group": "", "command": "", "keyword": "", "pattern": "", "metadata": "{}",
            **fields}


def test_a_post_naming_a_hidden_channel_or_agent_is_a_form_error(client, make_user, agent, webchat_channel,
                                                                 hidden):
    secret, vip = hidden
    client.force_login(desk_member(make_user, "view_route", "add_route", "view_apikey", "add_apikey",
                                   "view_iprule", "add_iprule", "view_channel", "change_channel"))
    for fields in ({"agent": secret.pk}, {"agent": agent.pk, "channel": vip.pk}):
        refused = client.post("/admin/routing/route/add/", route_form(**fields))
        assert refused.status_code == 200 and "Select a valid choice" in refused.content.decode(), fields
        assert_names_none(refused.content.decode(), "refused route")
    assert not Route.objects.exists()
    owner = make_user(Role.CUSTOMER)
    refused = client.post("/admin/identities/apikey/add/", {"user": owner.pk, "name": "k", "channels": [vip.pk]})
    assert refused.status_code == 200 and "Select a valid choice" in refused.content.decode()
    refused = client.post("/admin/quotas/iprule/add/", {"cidr": "10.0.0.0/8", "action": "deny", "channel": vip.pk,
                                                        "source": "manual", "enabled": "on"})
    assert refused.status_code == 200 and "Select a valid choice" in refused.content.decode()
    assert not ApiKey.objects.exists()
    assert AuditEvent.objects.filter(action="admin.refused").count() == 4  # crafted: each one audited
    # The same forms save what she may use.
    assert client.post("/admin/routing/route/add/", route_form(agent=agent.pk, channel=webchat_channel.pk)
                       ).status_code == 302


def test_a_hidden_value_a_row_holds_stays_unnamed_and_is_kept(client, make_user, webchat_channel, agent, hidden):
    """A channel she may use whose default agent she may not; a key scoped to a channel she may use
    and one she may not: both show "(one you may not use)", and saving keeps it."""
    secret, vip = hidden
    webchat_channel.default_agent = secret
    webchat_channel.save()
    key = ApiKey.generate(user=make_user(Role.CUSTOMER), name="scoped")[0]
    key.channels.set([webchat_channel, vip])
    client.force_login(desk_member(make_user, "view_channel", "change_channel", "view_apikey", "change_apikey"))
    url = f"/admin/connectors/channel/{webchat_channel.pk}/change/"
    shown = page(client, url)
    assert_names_none(shown, "channel form")
    assert "(one you may not use)" in shown
    saved = client.post(url, {"name": "Web chat", "slug": "web", "kind": "webchat", "enabled": "on",
                              "default_agent": secret.pk, "config": "{}", "visibility": "public",
                              "unknown_senders": webchat_channel.unknown_senders, "allowed_origins": "[]",
                              "refusal_message": webchat_channel.refusal_message})
    assert saved.status_code == 302
    webchat_channel.refresh_from_db()
    assert webchat_channel.default_agent == secret
    url = f"/admin/identities/apikey/{key.pk}/change/"
    shown = page(client, url)
    assert_names_none(shown, "key form")
    assert client.post(url, {"name": "renamed", "channels": [webchat_channel.pk, vip.pk]}).status_code == 302
    assert set(key.channels.all()) == {webchat_channel, vip}


def test_a_deletion_page_names_no_hidden_row(client, make_user, webchat_channel, agent, llm_model, hidden):
    """Deleting a channel would take along a route to an agent she may not use; deleting a model is
    held back by that agent's fallback on it: refused, the page naming the types, not the rows."""
    secret, _ = hidden
    Route.objects.create(name="board-escalations", priority=1, agent=secret, channel=webchat_channel)
    spare = LLMModel.objects.create(provider=llm_model.provider, name="spare-gpt")
    AgentFallback.objects.create(agent=secret, model=spare, position=1)
    client.force_login(desk_member(make_user, "view_channel", "delete_channel", "view_route", "delete_route",
                                   "view_llmmodel", "delete_llmmodel", "view_agent", "delete_agent"))
    for url, kind in ((f"/admin/connectors/channel/{webchat_channel.pk}/delete/", "route"),
                      (f"/admin/agents/llmmodel/{spare.pk}/delete/", "agent fallback")):
        shown = page(client, url)
        assert "board-escalations" not in shown and "secret-ops" not in shown, url
        assert_names_none(shown, url)
        assert f"<li>{kind}</li>" in shown, url  # the type, as for a hidden conversation
        client.post(url, {"post": "yes"})
    assert Channel.objects.filter(pk=webchat_channel.pk).exists() and LLMModel.objects.filter(pk=spare.pk).exists()
    client.force_login(superuser(make_user))
    assert "board-escalations" in page(client, f"/admin/connectors/channel/{webchat_channel.pk}/delete/")


def test_every_gateway_admin_scopes_its_pickers():
    """A new admin page gets the scoped filters, choices and deletion pages too; and no channel,
    agent or tool is a raw-id field (its widget prints the name of any id typed in)."""
    ours = [model_admin for model, model_admin in admin.site._registry.items()
            if model.__module__.startswith("apps.") or type(model_admin).__module__.startswith("apps.")]
    assert ours and all(isinstance(model_admin, UsablePickers) for model_admin in ours), [
        type(a).__name__ for a in ours if not isinstance(a, UsablePickers)]
    for model_admin in ours:
        for name in model_admin.raw_id_fields:
            assert model_admin.model._meta.get_field(name).related_model._meta.label not in SCOPED, name

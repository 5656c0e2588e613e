"""What was said on a channel stays with those who may use it (apps/identities/channel_scope.py):
a staff member who may not use a channel, or a key in the name of a customer it was closed to,
finds nothing of it anywhere, as if it did not exist."""
import uuid

import pytest
from django.contrib.auth.models import Permission
from guardian.shortcuts import assign_perm
from rest_framework.test import APIClient

from apps.agents.models import Agent
from apps.agents.runtime import agent_run
from apps.connectors.models import Channel
from apps.identities.models import ChannelIdentity
from apps.identities.roles import Role
from apps.identities.services import api_key_create
from apps.logs.services import audit
from apps.routing.models import Route
from tests.helpers import send

pytestmark = pytest.mark.django_db


@pytest.fixture
def vip(agent):
    """A channel open to everyone, until a test closes it to all but the admin role (``close``)."""
    return Channel.objects.create(slug="vip", name="VIP", kind="webchat", default_agent=agent)


def desk_member(make_user, *codenames):
    """Staff limited to the channels an employee may use, with these permissions."""
    user = make_user(Role.EMPLOYEE, is_staff=True)
    user.user_permissions.add(*Permission.objects.filter(codename__in=codenames))
    return user


def assert_not_found_on_every_page(client, base: str, pk, secret: str) -> None:
    """The admin pages of a row the staff member may not see: "not found" (the admin redirects),
    its text nowhere, and no object-permission page."""
    for page in ("change", "history", "delete"):
        response = client.get(f"{base}/{pk}/{page}/")
        assert response.status_code == 302 and secret not in response.content.decode(), page
    assert client.get(f"{base}/{pk}/permissions/").status_code == 404


def converse(channel, user, text, conversation_id=None):
    said = send(channel, user, text, conversation_id=conversation_id)
    agent_run(said.id)
    return said


def close(channel) -> None:
    channel.visibility = "admin"
    channel.save()


def test_an_api_key_reads_no_conversation_on_a_channel_closed_to_its_user(
        api_channel, webchat_channel, vip, make_user, api_key_for, fake_llm):
    """Staff who may issue keys (identities.add_apikey) give one to a customer who spoke on a
    channel since closed to customers: the key reads that transcript no more than the staff
    member may, and gets the answer a missing conversation gets."""
    speaker = make_user(Role.CUSTOMER)
    shown = converse(webchat_channel, speaker, "hello from the public chat")
    hidden = converse(vip, speaker, "VIP-SECRET: the merger closes Friday")
    close(vip)
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {api_key_for(speaker)}")

    def read(conversation_id):
        return api.get(f"/api/v1/conversations/{conversation_id}/messages")

    missing = read(uuid.uuid4())
    refused = read(hidden.conversation_id)
    assert (refused.status_code, refused.json()) == (missing.status_code, missing.json()) == (
        404, {"error": {"code": "not_found", "message": "No such conversation."}})
    assert "VIP-SECRET" not in refused.content.decode()
    assert read(shown.conversation_id).status_code == 200
    # The channel given back to the speaker, one by one: readable again.
    assign_perm("connectors.use_channel", speaker, vip)
    assert "VIP-SECRET" in read(hidden.conversation_id).content.decode()


def test_a_conversations_dashboard_page_shows_no_audit_event_of_a_hidden_one(
        client, webchat_channel, vip, make_user, fake_llm):
    """Its speaker's other audit events in its time reach only staff who may read the audit log,
    and even they get none about a conversation on a channel they may not use; the CSV export
    holds the same rows."""
    close(vip)
    boss = make_user(Role.ADMIN, is_staff=True)
    shown = converse(webchat_channel, boss, "hello from the public chat")
    hidden = converse(vip, boss, "VIP-SECRET: the merger closes Friday")
    converse(vip, boss, "talk to a human", conversation_id=str(hidden.conversation_id))  # handoff.requested
    api_key_create(user=boss, actor=boss, name="the boss's own key")  # apikey.created
    audit(action="message.flagged", actor=boss, target=hidden)  # about a message of the hidden one
    converse(webchat_channel, boss, "talk to a human", conversation_id=str(shown.conversation_id))
    url = f"/dashboard/conversations/{shown.conversation_id}/"

    def audit_seen_by(user):
        """(action, target) of the page's audit rows; the page and the rows' CSV export, as text."""
        client.force_login(user)
        page = client.get(url)
        assert page.status_code == 200
        rows = next(t for t in page.context["tables"] if t.name == "audit").rows
        text = page.content.decode() + client.get(url, {"export": "audit"}).content.decode()
        return {(row["action"], row["target_id"]) for row in rows}, text

    about_it = ("handoff.requested", str(shown.conversation_id))
    about_the_hidden = ("handoff.requested", str(hidden.conversation_id))
    seen, text = audit_seen_by(desk_member(make_user, "view_dashboard"))
    assert seen == {about_it}
    assert "apikey.created" not in text and about_the_hidden[1] not in text
    seen, text = audit_seen_by(desk_member(make_user, "view_dashboard", "view_auditevent"))
    assert about_it in seen and "apikey.created" in {action for action, _ in seen}
    assert about_the_hidden not in seen and about_the_hidden[1] not in text
    assert "message.flagged" not in text
    seen, text = audit_seen_by(make_user(None, is_staff=True, is_superuser=True))  # every channel
    assert about_the_hidden in seen and about_the_hidden[1] in text
    assert ("message.flagged", str(hidden.pk)) in seen


def channel_form(channel, **changes):
    """The channel's change form as its admin page posts it."""
    return {"name": channel.name, "slug": channel.slug, "kind": channel.kind, "enabled": "on",
            "default_agent": channel.default_agent_id or "", "config": "{}", "visibility": channel.visibility,
            "unknown_senders": channel.unknown_senders, "refusal_message": channel.refusal_message,
            "allowed_origins": "[]", **changes}


def test_staff_cannot_open_a_channel_they_may_not_use_in_its_admin(
        client, webchat_channel, vip, make_user, fake_llm):
    """An employee who may edit channels made an admin-only one internal, then read its
    transcripts. The channels admin now shows staff only the channels they may use: the others
    are "not found" on every page (change, history, delete, object permissions)."""
    close(vip)
    said = converse(vip, make_user(Role.ADMIN), "VIP-SECRET board minutes")
    operator = desk_member(make_user, "view_channel", "add_channel", "change_channel", "delete_channel",
                           "view_conversation", "view_message", "view_userobjectpermission",
                           "view_groupobjectpermission")
    client.force_login(operator)
    base = "/admin/connectors/channel"
    assert [c.slug for c in client.get(f"{base}/").context["cl"].result_list] == ["web"]
    assert_not_found_on_every_page(client, base, vip.pk, "VIP")
    client.post(f"{base}/{vip.pk}/change/", channel_form(vip, visibility="internal"))
    client.post(f"{base}/{vip.pk}/delete/", {"post": "yes"})
    client.post(f"{base}/", {"action": "delete_selected", "_selected_action": [vip.pk], "post": "yes"})
    vip.refresh_from_db()
    assert vip.visibility == "admin"
    assert client.get(f"/admin/conversations/conversation/{said.conversation_id}/change/").status_code == 302
    # Channels they may use: changed and added as before.
    assert client.get(f"{base}/{webchat_channel.pk}/permissions/").status_code == 200
    assert client.post(f"{base}/{webchat_channel.pk}/change/",
                       channel_form(webchat_channel, name="Shop chat")).status_code == 302
    added = client.post(f"{base}/add/", channel_form(Channel(slug="shop", name="Shop", kind="webchat")))
    assert added.status_code == 302, added.context["errors"]
    assert Channel.objects.get(slug="web").name == "Shop chat"
    assert {c.slug for c in client.get(f"{base}/").context["cl"].result_list} == {"web", "shop"}
    # Superusers see every channel.
    client.force_login(make_user(None, is_staff=True, is_superuser=True))
    assert {c.slug for c in client.get(f"{base}/").context["cl"].result_list} == {"web", "shop", "vip"}
    assert client.get(f"{base}/{vip.pk}/change/").status_code == 200


def test_staff_find_only_the_agents_they_may_use_in_its_admin(client, agent, llm_model, make_user):
    ops = Agent.objects.create(slug="ops", name="Ops", model=llm_model, visibility="admin",
                               system_prompt="OPS-SECRET runbook")
    operator = desk_member(make_user, "view_agent", "change_agent", "delete_agent", "view_userobjectpermission",
                           "view_groupobjectpermission")
    client.force_login(operator)
    base = "/admin/agents/agent"
    assert [a.slug for a in client.get(f"{base}/").context["cl"].result_list] == ["assistant"]
    assert_not_found_on_every_page(client, base, ops.pk, "OPS-SECRET")
    client.post(f"{base}/{ops.pk}/change/", {"slug": "ops", "name": "Ops", "model": llm_model.pk,
                                            "visibility": "public"})
    client.post(f"{base}/{ops.pk}/delete/", {"post": "yes"})
    ops.refresh_from_db()
    assert ops.visibility == "admin"
    assert client.get(f"{base}/{agent.pk}/change/").status_code == 200
    # An agent granted one by one (use_agent) is one they may use.
    assign_perm("agents.use_agent", operator, ops)
    assert client.get(f"{base}/{ops.pk}/change/").status_code == 200
    client.force_login(make_user(None, is_staff=True, is_superuser=True))
    assert {a.slug for a in client.get(f"{base}/").context["cl"].result_list} == {"assistant", "ops"}


def test_staff_find_only_the_tools_they_may_use_in_its_admin(client, tools, make_user):
    """An employee who may change tools cannot make the admin tool block_user public (every
    customer's, on any agent that carries it)."""
    block = tools["block_user"]
    operator = desk_member(make_user, "view_tool", "change_tool", "delete_tool", "view_userobjectpermission",
                           "view_groupobjectpermission")
    client.force_login(operator)
    base = "/admin/agents/tool"
    listed = {t.slug for t in client.get(f"{base}/").context["cl"].result_list}
    assert "search_conversations" in listed and "block_user" not in listed
    assert_not_found_on_every_page(client, base, block.pk, block.description)
    client.post(f"{base}/{block.pk}/change/", {"name": block.name, "description": block.description,
                                               "visibility": "public", "enabled": "on"})
    block.refresh_from_db()
    assert block.visibility == "admin"
    search = tools["search_conversations"]  # one she may use: the same form saves
    assert client.post(f"{base}/{search.pk}/change/", {"name": search.name, "description": "Find messages.",
                                                      "visibility": "internal", "enabled": "on"}).status_code == 302
    search.refresh_from_db()
    assert search.description == "Find messages."


def test_the_admin_pages_that_link_to_channels_and_agents_still_work(
        client, webchat_channel, vip, agent, llm_model, make_user):
    """Filters, pickers and popups that name channels or agents are read from their tables, not
    through the channels' and agents' admin pages: they work for staff who see fewer of them."""
    close(vip)
    Agent.objects.create(slug="ops", name="Ops", model=llm_model, visibility="admin")
    operator = desk_member(make_user, "view_channel", "view_agent", "view_route", "view_apikey", "add_apikey",
                           "view_channelidentity", "view_iprule", "view_quotapolicy", "add_quotapolicy",
                           "view_usagedaily", "view_conversation")
    client.force_login(operator)
    for url in ("/admin/routing/route/", f"/admin/routing/route/?channel__id__exact={webchat_channel.pk}",
                f"/admin/routing/route/?agent__id__exact={agent.pk}", "/admin/identities/apikey/add/",
                f"/admin/identities/channelidentity/?channel__id__exact={webchat_channel.pk}",
                "/admin/quotas/iprule/", "/admin/quotas/usagedaily/", "/admin/quotas/quotapolicy/add/",
                f"/admin/conversations/conversation/?agent__id__exact={agent.pk}"):
        assert client.get(url).status_code == 200, url
    popup = client.get("/admin/connectors/channel/", {"_to_field": "id", "_popup": "1"})
    assert popup.status_code == 200 and [c.slug for c in popup.context["cl"].result_list] == ["web"]


def test_the_route_tester_finds_no_conversation_on_a_hidden_channel(
        client, webchat_channel, vip, make_user, fake_llm):
    """It told a hidden conversation from a missing one, and named the agent it sticks to."""
    close(vip)
    hidden = converse(vip, make_user(Role.ADMIN), "VIP-SECRET board minutes")
    shown = converse(webchat_channel, make_user(Role.CUSTOMER), "hello from the public chat")
    desk = desk_member(make_user, "view_route")

    def tested(user, conversation_id):
        client.force_login(user)
        return client.post("/admin/routing/route/test/", {
            "channel": webchat_channel.pk, "sender": desk.username, "message": "x", "metadata": "{}",
            "conversation": str(conversation_id)}).content.decode()

    assert "No such conversation." in tested(desk, uuid.uuid4())
    refused = tested(desk, hidden.conversation_id)
    assert "No such conversation." in refused and "sticks to" not in refused
    assert "sticks to" in tested(desk, shown.conversation_id)
    assert "sticks to" in tested(make_user(None, is_staff=True, is_superuser=True), hidden.conversation_id)


def test_routes_to_hidden_agents_or_on_hidden_channels_are_not_hers_to_see(client, make_user, llm_model, agent,
                                                                           webchat_channel):
    secret = Agent.objects.create(slug="secret-ops", name="Secret ops", model=llm_model, visibility="admin")
    vip = Channel.objects.create(slug="vip-desk", name="VIP desk", kind="api", default_agent=secret,
                                 visibility="admin")
    Route.objects.create(name="board-escalations", priority=1, agent=secret, channel=vip, keyword="merger")
    Route.objects.create(name="ops-anywhere", priority=2, agent=secret, keyword="outage")
    Route.objects.create(name="greetings", priority=3, agent=agent, keyword="hello")
    desk = desk_member(make_user, "view_route")
    client.force_login(desk)
    assert [r.name for r in client.get("/admin/routing/route/").context["cl"].result_list] == ["greetings"]
    tester = "/admin/routing/route/test/"
    assert "VIP desk" not in client.get(tester).content.decode()
    boss = make_user(Role.ADMIN)
    on_vip = client.post(tester, {"channel": vip.pk, "sender": boss.username, "message": "the merger",
                                  "metadata": "{}"}).content.decode()
    assert "secret-ops" not in on_vip and "board-escalations" not in on_vip  # not a channel she may pick
    here = client.post(tester, {"channel": webchat_channel.pk, "sender": boss.username, "message": "an outage",
                                "metadata": "{}"}).content.decode()
    assert "agent you may not see" in here and "secret-ops" not in here and "ops-anywhere" not in here
    assert "greetings" in client.post(tester, {"channel": webchat_channel.pk, "sender": boss.username,
                                               "message": "hello", "metadata": "{}"}).content.decode()


def test_identities_on_hidden_channels_are_not_listed(client, webchat_channel, vip, make_user):
    """Who spoke on a channel is part of what was said there: the identities admin and a user's
    page list only the identities on channels the staff member may use."""
    close(vip)
    customer = make_user(Role.CUSTOMER)
    ChannelIdentity.objects.create(channel=webchat_channel, external_id="web-visitor-1", user=customer)
    hidden = ChannelIdentity.objects.create(channel=vip, external_id="vip-board-member", user=customer)
    client.force_login(desk_member(make_user, "view_channelidentity", "view_user"))
    base = "/admin/identities/channelidentity"
    assert [i.external_id for i in client.get(f"{base}/").context["cl"].result_list] == ["web-visitor-1"]
    assert client.get(f"{base}/{hidden.pk}/change/").status_code == 302
    page = client.get(f"/admin/identities/user/{customer.pk}/change/").content.decode()
    assert "web-visitor-1" in page and "vip-board-member" not in page

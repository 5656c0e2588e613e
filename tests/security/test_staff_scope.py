"""What was said on a channel stays with those who may use it (apps/identities/channel_scope.py):
a staff member who may not use a channel, or a key in the name of a customer it was closed to,
finds nothing of it anywhere, as if it did not exist."""
import uuid

import pytest
from django.contrib.auth.models import Permission
from guardian.shortcuts import assign_perm
from rest_framework.test import APIClient

from apps.agents.runtime import agent_run
from apps.connectors.models import Channel
from apps.identities.roles import Role
from apps.identities.services import api_key_create
from apps.logs.services import audit
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

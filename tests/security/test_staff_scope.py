"""What was said on a channel stays with those who may use it (apps/identities/channel_scope.py):
a staff member who may not use a channel, or a key in the name of a customer it was closed to,
finds nothing of it anywhere, as if it did not exist."""
import uuid

import pytest
from guardian.shortcuts import assign_perm
from rest_framework.test import APIClient

from apps.agents.runtime import agent_run
from apps.connectors.models import Channel
from apps.identities.roles import Role
from tests.helpers import send

pytestmark = pytest.mark.django_db


@pytest.fixture
def vip(agent):
    """A channel open to everyone, until a test closes it to all but the admin role (``close``)."""
    return Channel.objects.create(slug="vip", name="VIP", kind="webchat", default_agent=agent)


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

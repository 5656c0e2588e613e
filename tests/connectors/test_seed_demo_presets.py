"""seed_demo --json prints the HubSpot and Zendesk demo channels' secrets, and they work."""
import io
import json

import pytest
from django.core.management import call_command

from apps.connectors.models import Channel
from apps.conversations.models import Message
from tests.connectors.crm_preset_helpers import hubspot_post, zendesk_post

pytestmark = pytest.mark.django_db


def seed() -> dict:
    out = io.StringIO()
    call_command("seed_demo", "--json", stdout=out)
    return json.loads(out.getvalue())


def test_shape_and_reseeding_keeps_the_secrets():
    channels = seed()["channels"]
    assert set(channels["hubspot"]) == {"slug", "client_secret"}
    assert set(channels["zendesk"]) == {"slug", "secret"}
    assert {"slack", "wecom", "crm"} <= set(channels)  # the other channels are still there
    again = seed()["channels"]
    assert (again["hubspot"], again["zendesk"]) == (channels["hubspot"], channels["zendesk"])


def test_the_printed_secrets_drive_each_webhook(client):
    channels = seed()["channels"]
    hubspot = Channel.objects.get(slug=channels["hubspot"]["slug"])
    assert hubspot_post(client, hubspot, {"id": "h1", "user_id": "501", "message": "hi"},
                        secret=channels["hubspot"]["client_secret"]).status_code == 202
    zendesk = Channel.objects.get(slug=channels["zendesk"]["slug"])
    assert zendesk_post(client, zendesk, {"id": "z1", "user_id": "9001", "message": "hello"},
                        secret=channels["zendesk"]["secret"]).status_code == 202
    assert Message.objects.filter(direction="in").count() == 2

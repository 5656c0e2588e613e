"""seed_demo --json prints the HubSpot, Zendesk and WeCom AI bot demo channels' secrets, and they work."""
import io
import json

import pytest
from django.core.management import call_command

from apps.connectors.models import Channel
from apps.conversations.models import Message
from tests.connectors.aibot_helpers import aibot_crypto, aibot_post, open_reply, text_callback
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
    assert set(channels["wecom_aibot"]) == {"slug", "token", "encoding_aes_key", "bot_id"}
    assert {"slack", "wecom", "crm"} <= set(channels)  # the other channels are still there
    again = seed()["channels"]
    for kind in ("hubspot", "zendesk", "wecom_aibot"):
        assert again[kind] == channels[kind]


def test_the_printed_secrets_drive_each_webhook(client):
    channels = seed()["channels"]
    hubspot = Channel.objects.get(slug=channels["hubspot"]["slug"])
    assert hubspot_post(client, hubspot, {"id": "h1", "user_id": "501", "message": "hi"},
                        secret=channels["hubspot"]["client_secret"]).status_code == 202
    zendesk = Channel.objects.get(slug=channels["zendesk"]["slug"])
    assert zendesk_post(client, zendesk, {"id": "z1", "user_id": "9001", "message": "hello"},
                        secret=channels["zendesk"]["secret"]).status_code == 202
    a = channels["wecom_aibot"]
    aibot = Channel.objects.get(slug=a["slug"])
    crypto = aibot_crypto(token=a["token"], encoding_aes_key=a["encoding_aes_key"])
    response = aibot_post(client, aibot, text_callback(bot_id=a["bot_id"]), crypto=crypto)
    assert open_reply(response.content, crypto=crypto)["msgtype"] == "stream"
    assert Message.objects.filter(direction="in").count() == 3

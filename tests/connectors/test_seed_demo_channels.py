"""seed_demo --json prints each webhook channel's test secrets in the shape docs/channels/ shows, and they work."""
import io
import json

import pytest
from django.core.management import call_command

from apps.connectors.wecom_crypto import WeComCrypto
from apps.conversations.models import Message
from tests.connectors.connector_helpers import crm_post, slack_event, slack_post, wecom_post, wecom_text_xml

pytestmark = pytest.mark.django_db


def seed() -> dict:
    out = io.StringIO()
    call_command("seed_demo", "--json", stdout=out)
    return json.loads(out.getvalue())


def test_shape_is_the_designs_and_reseeding_keeps_the_secrets():
    channels = seed()["channels"]
    assert set(channels["slack"]) == {"slug", "signing_secret", "bot_token", "bot_user_id"}
    assert set(channels["wecom"]) == {"slug", "token", "encoding_aes_key", "corp_id", "agent_id", "secret"}
    assert set(channels["crm"]) == {"slug", "secret", "callback_url"}
    assert {"api", "webchat"} <= set(channels)
    assert seed()["channels"] == channels


def test_the_printed_secrets_drive_each_webhook(client):
    from apps.connectors.models import Channel

    channels = seed()["channels"]
    slack = Channel.objects.get(slug=channels["slack"]["slug"])
    assert slack_post(client, slack, slack_event("message_im.json"),
                      secret=channels["slack"]["signing_secret"]).status_code == 200
    w = channels["wecom"]
    crypto = WeComCrypto(token=w["token"], encoding_aes_key=w["encoding_aes_key"], receive_id=w["corp_id"])
    wecom = Channel.objects.get(slug=w["slug"])
    plaintext = wecom_text_xml(corp_id=w["corp_id"], agent_id=w["agent_id"])
    assert wecom_post(client, wecom, plaintext, crypto=crypto).status_code == 200
    crm = Channel.objects.get(slug=channels["crm"]["slug"])
    assert crm_post(client, crm, {"id": "e1", "user_id": "u1", "message": "hi"},
                    secret=channels["crm"]["secret"]).status_code == 202
    assert Message.objects.filter(direction="in").count() == 3

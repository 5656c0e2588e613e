"""seed_demo --json prints the Feishu and DingTalk channels' secrets (docs/channels/README.md), and they work."""
import io
import json

import pytest
from django.core.management import call_command

from apps.connectors.models import Channel
from apps.conversations.models import Message
from tests.connectors.feishu_dingtalk_helpers import dingtalk_message, dingtalk_post, feishu_event, feishu_post

pytestmark = pytest.mark.django_db


def seed() -> dict:
    out = io.StringIO()
    call_command("seed_demo", "--json", stdout=out)
    return json.loads(out.getvalue())["channels"]


def test_feishu_shape_and_secrets_drive_the_webhook(client):
    channels = seed()
    feishu = channels["feishu"]
    assert set(feishu) == {"slug", "app_id", "app_secret", "verification_token", "encrypt_key"}
    assert seed()["feishu"] == feishu  # re-seeding keeps them
    channel = Channel.objects.get(slug=feishu["slug"])
    event = feishu_event(text="hello", chat_type="p2p", mentions=[])
    event["header"]["token"] = feishu["verification_token"]
    assert feishu_post(client, channel, event, encrypt_key=feishu["encrypt_key"]).status_code == 200
    assert Message.objects.filter(direction="in", text="hello").count() == 1


def test_dingtalk_shape_and_secrets_drive_the_webhook(client):
    dingtalk = seed()["dingtalk"]
    assert set(dingtalk) == {"slug", "app_key", "app_secret", "robot_code"}
    assert seed()["dingtalk"] == dingtalk
    channel = Channel.objects.get(slug=dingtalk["slug"])
    payload = dingtalk_message(session_base="https://oapi.dingtalk.com", text="hello")
    assert dingtalk_post(client, channel, payload, secret=dingtalk["app_secret"]).status_code == 200
    assert Message.objects.filter(direction="in", text="hello").count() == 1

"""Channel secrets: encrypted at rest, write-only in the admin, validated per kind."""
import time

import pytest
from cryptography.fernet import Fernet
from django.db import connection
from django.urls import reverse

from apps.connectors.models import Channel
from apps.connectors.secrets import secrets_decrypt
from apps.conversations.models import Message

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff_client(client, admin_user):
    admin_user.is_superuser = True
    admin_user.save()
    client.force_login(admin_user)
    return client


def stored_row(channel) -> str:
    with connection.cursor() as cursor:
        cursor.execute("SELECT config, secrets_ciphertext FROM connectors_channel WHERE id = %s", [channel.pk])
        return " ".join(str(v) for v in cursor.fetchone())


def test_secrets_are_encrypted_at_rest(slack_channel):
    row = stored_row(slack_channel)
    assert "slack-signing-secret-for-tests" not in row and "xoxb-test-bot-token" not in row
    assert Channel.objects.get(pk=slack_channel.pk).secrets["bot_token"] == "xoxb-test-bot-token"


def test_an_explicit_field_encryption_key_is_used(settings, agent):
    settings.FIELD_ENCRYPTION_KEY = Fernet.generate_key().decode()
    channel = Channel(slug="s", name="s", kind="slack", default_agent=agent)
    channel.set_secrets(signing_secret="abc", bot_token="xoxb-1")
    channel.save()
    assert Fernet(settings.FIELD_ENCRYPTION_KEY.encode()).decrypt(channel.secrets_ciphertext.encode())
    settings.FIELD_ENCRYPTION_KEY = Fernet.generate_key().decode()
    with pytest.raises(Exception, match="FIELD_ENCRYPTION_KEY"):
        secrets_decrypt(channel.secrets_ciphertext)


class TestAdmin:
    def form_data(self, channel, **overrides):
        return {"name": channel.name, "slug": channel.slug, "kind": channel.kind, "enabled": "on",
                "default_agent": channel.default_agent_id, "config": '{"bot_user_id": "U0LAN0Z89"}',
                "allow_visitors": "on", "allowed_origins": "[]", "visibility": "public",
                "unknown_senders": "create_customer", **overrides}

    def test_change_page_never_shows_a_stored_secret(self, staff_client, slack_channel):
        page = staff_client.get(reverse("admin:connectors_channel_change", args=[slack_channel.pk]))
        html = page.content.decode()
        assert page.status_code == 200
        assert "xoxb-test-bot-token" not in html and "slack-signing-secret-for-tests" not in html
        assert "Stored (hidden)" in html

    def test_blank_keeps_the_stored_secret_and_typing_replaces_it(self, staff_client, slack_channel):
        url = reverse("admin:connectors_channel_change", args=[slack_channel.pk])
        response = staff_client.post(url, self.form_data(slack_channel, bot_token="xoxb-rotated"))
        assert response.status_code == 302, response.content.decode()[:2000]
        secrets = Channel.objects.get(pk=slack_channel.pk).secrets
        assert secrets == {"signing_secret": "slack-signing-secret-for-tests", "bot_token": "xoxb-rotated"}

    def test_a_config_that_does_not_fit_the_kind_is_refused(self, staff_client, slack_channel):
        url = reverse("admin:connectors_channel_change", args=[slack_channel.pk])
        response = staff_client.post(url, self.form_data(slack_channel, bot_token="not-a-slack-token"))
        assert response.status_code == 200 and "bot_token" in response.content.decode()
        assert Channel.objects.get(pk=slack_channel.pk).secrets["bot_token"] == "xoxb-test-bot-token"

    def test_adding_a_wecom_channel_needs_its_secrets(self, staff_client, agent):
        url = reverse("admin:connectors_channel_add")
        data = {"name": "WeCom", "slug": "wecom", "kind": "wecom", "enabled": "on", "default_agent": agent.pk,
                "config": '{"corp_id": "ww1", "agent_id": "1000002"}', "allowed_origins": "[]",
                "visibility": "internal", "unknown_senders": "refuse"}
        assert staff_client.post(url, data).status_code == 200  # token / key / secret missing
        data.update(token="t", encoding_aes_key="jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C", secret="s")
        assert staff_client.post(url, data).status_code == 302
        wecom = Channel.objects.get(slug="wecom")
        assert wecom.secrets["token"] == "t"
        assert (wecom.visibility, wecom.unknown_senders) == ("internal", "refuse")


def test_a_misconfigured_channel_refuses_webhooks_with_503(client, agent):
    channel = Channel.objects.create(slug="half", name="half", kind="slack", default_agent=agent)
    response = client.post(f"/api/v1/channels/{channel.slug}/webhook", data=b"{}", content_type="application/json",
                           headers={"X-Slack-Request-Timestamp": str(int(time.time())), "X-Slack-Signature": "v0=0"})
    assert response.status_code == 503 and response.json()["error"]["code"] == "channel_misconfigured"
    assert not Message.objects.exists()

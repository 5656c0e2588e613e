"""The admin offers the HubSpot, Zendesk and WeCom AI bot kinds, takes their secrets write-only
(encrypted at rest) and refuses a configuration that does not fit the kind."""
import pytest
from django.urls import reverse

from apps.connectors.models import Channel
from tests.connectors.aibot_helpers import AIBOT
from tests.connectors.test_channel_secrets import stored_row

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff_client(client, admin_user):
    admin_user.is_superuser = True
    admin_user.save()
    client.force_login(admin_user)
    return client


def add(staff_client, agent, kind, config="{}", **secrets):
    data = {"name": kind, "slug": kind.replace("_", "-"), "kind": kind, "enabled": "on", "default_agent": agent.pk,
            "config": config, "allowed_origins": "[]", "visibility": "public", "unknown_senders": "create_customer",
            **secrets}
    return staff_client.post(reverse("admin:connectors_channel_add"), data)


def test_the_add_page_offers_the_new_kinds(staff_client):
    html = staff_client.get(reverse("admin:connectors_channel_add")).content.decode()
    for value, label in (("hubspot", "HubSpot"), ("zendesk", "Zendesk"), ("wecom_aibot", "WeCom AI bot")):
        assert f'value="{value}"' in html and label in html
    assert "HubSpot app client secret" in html


@pytest.mark.parametrize(("kind", "secrets"), [
    ("hubspot", {"client_secret": "hs-client-secret-1"}),
    ("zendesk", {"secret": "zd-signing-secret-1"}),
    ("wecom_aibot", {"token": AIBOT["token"], "encoding_aes_key": AIBOT["encoding_aes_key"]}),
])
def test_each_kind_needs_its_secrets_and_keeps_them_encrypted(staff_client, agent, kind, secrets):
    assert add(staff_client, agent, kind).status_code == 200  # refused: secrets missing
    assert add(staff_client, agent, kind, **secrets).status_code == 302
    channel = Channel.objects.get(kind=kind)
    assert channel.secrets == secrets
    assert not any(value in stored_row(channel) for value in secrets.values())
    page = staff_client.get(reverse("admin:connectors_channel_change", args=[channel.pk])).content.decode()
    assert not any(value in page for value in secrets.values())


def test_a_bad_aes_key_or_callback_url_is_refused_by_the_form(staff_client, agent):
    response = add(staff_client, agent, "wecom_aibot", token="t", encoding_aes_key="short")
    assert response.status_code == 200 and "encoding_aes_key" in response.content.decode()
    response = add(staff_client, agent, "hubspot", config='{"callback_url": "ftp://x"}', client_secret="s")
    assert response.status_code == 200 and "callback_url" in response.content.decode()
    assert not Channel.objects.exists()

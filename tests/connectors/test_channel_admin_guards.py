"""A channel's JSON settings have one shape, and its changes are audited: its config decides where
its talk goes (a CRM callback URL), its origins who may embed it."""
import json

import pytest
from django.test import Client

from apps.connectors.models import Channel
from apps.logs.models import AuditEvent

pytestmark = pytest.mark.django_db


@pytest.fixture
def root_client(client, make_user):
    client.force_login(make_user(None, is_staff=True, is_superuser=True))
    return client


def channel_form(channel, **fields):
    return {"name": channel.name, "slug": channel.slug, "kind": channel.kind, "enabled": "on",
            "default_agent": channel.default_agent_id, "config": "{}", "allowed_origins": "[]",
            "visibility": channel.visibility, "unknown_senders": channel.unknown_senders,
            "refusal_message": channel.refusal_message, **fields}


@pytest.mark.parametrize("kind", ["webchat", "slack"])  # slack: a kind whose settings are read
def test_settings_of_the_wrong_shape_are_refused_not_a_500(root_client, webchat_channel, slack_channel, kind):
    channel = webchat_channel if kind == "webchat" else slack_channel
    url = f"/admin/connectors/channel/{channel.pk}/change/"
    for fields in ({"config": "[1]"}, {"config": "5"}, {"allowed_origins": "5"},
                   {"allowed_origins": '[1, "https://a.example"]'}):
        page = root_client.post(url, channel_form(channel, **fields))
        assert page.status_code == 200 and page.context["adminform"].form.errors, fields
    stored = Channel.objects.get(pk=channel.pk)
    assert stored.config == channel.config and stored.allowed_origins == []


def test_only_a_superuser_replaces_a_stored_secret(client, slack_channel, make_user):
    """Whoever holds a channel's signing secret signs its platform's events as anyone on it."""
    client.force_login(make_user("admin", is_staff=True))  # the admin role may change channels
    root_client = Client()
    root_client.force_login(make_user(None, is_staff=True, is_superuser=True))
    url = f"/admin/connectors/channel/{slack_channel.pk}/change/"
    form = channel_form(slack_channel, config=json.dumps(slack_channel.config))
    before = slack_channel.secrets
    for fields in ({"signing_secret": "mine-now"}, {"clear_secrets": "on"}, {"kind": "crm"}):
        page = client.post(url, {**form, **fields})
        assert page.status_code == 200 and "Only a superuser" in page.content.decode(), fields
    assert Channel.objects.get(pk=slack_channel.pk).secrets == before
    assert AuditEvent.objects.filter(action="admin.refused").count() == 3
    # A superuser replaces one, and the audit names it (never its value).
    assert root_client.post(url, {**form, "signing_secret": "rotated"}).status_code == 302
    event = AuditEvent.objects.get(action="channel.changed")
    assert event.detail["secrets"] == {"replaced": ["signing_secret"]} and "rotated" not in json.dumps(
        [event.before, event.after, event.detail])
    # A secret not stored yet is hers to set.
    Channel.objects.filter(pk=slack_channel.pk).update(secrets_ciphertext="")
    unset = Channel.objects.get(pk=slack_channel.pk)
    unset.set_secrets(bot_token="xoxb-test")
    unset.save()
    assert client.post(url, {**form, "signing_secret": "first"}).status_code == 302
    assert Channel.objects.get(pk=slack_channel.pk).secrets["signing_secret"] == "first"


def test_a_row_stored_before_the_rule_breaks_no_visitor(client, webchat_channel):
    Channel.objects.filter(pk=webchat_channel.pk).update(allowed_origins=5)
    response = client.get(f"/chat/{webchat_channel.slug}/widget-session", HTTP_ORIGIN="https://shop.example")
    assert response.status_code == 403 and response.json()["error"]["code"]


def test_changes_are_audited_with_the_settings_before_and_after(root_client, webchat_channel):
    url = f"/admin/connectors/channel/{webchat_channel.pk}/change/"
    form = channel_form(webchat_channel, allowed_origins='["https://shop.example"]')
    assert root_client.post(url, form).status_code == 302
    event = AuditEvent.objects.get(action="channel.changed")
    assert event.before["allowed_origins"] == [] and event.after["allowed_origins"] == ["https://shop.example"]
    assert root_client.post(url, form).status_code == 302  # nothing changed: nothing audited
    assert AuditEvent.objects.filter(action="channel.changed").count() == 1
    root_client.post(f"/admin/connectors/channel/{webchat_channel.pk}/delete/", {"post": "yes"})
    assert AuditEvent.objects.get(action="channel.deleted").before["kind"] == "webchat"

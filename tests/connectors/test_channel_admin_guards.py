"""A channel's JSON settings have one shape, and its changes are audited: its config decides where
its talk goes (a CRM callback URL), its origins who may embed it."""
import pytest

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


def test_settings_of_the_wrong_shape_are_refused_not_a_500(root_client, webchat_channel):
    url = f"/admin/connectors/channel/{webchat_channel.pk}/change/"
    for fields in ({"config": "[1]"}, {"allowed_origins": "5"}, {"allowed_origins": '[1, "https://a.example"]'}):
        page = root_client.post(url, channel_form(webchat_channel, **fields))
        assert page.status_code == 200 and page.context["adminform"].form.errors, fields
    webchat_channel.refresh_from_db()
    assert webchat_channel.config == {} and webchat_channel.allowed_origins == []


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

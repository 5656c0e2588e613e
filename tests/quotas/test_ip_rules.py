"""IP allow/deny rules, global and per channel, IPv4 and IPv6, from the side refused."""
import pytest
from asgiref.sync import sync_to_async
from django.core.exceptions import ValidationError

from apps.connectors.models import Channel
from apps.conversations import pipeline
from apps.conversations.models import Message
from apps.conversations.normalized import NormalizedMessage
from apps.core.errors import IpForbidden
from apps.identities.models import ChannelIdentity
from apps.logs.models import AuditEvent
from apps.quotas.iprules import ip_allowed
from apps.quotas.models import IpRule
from apps.quotas.services import ip_allowlist_replace

URL = "/api/v1/messages"


def rule(action, cidr, channel=None, **fields):
    return IpRule.objects.create(action=action, cidr=cidr, channel=channel, **fields)


@pytest.mark.django_db
class TestRules:
    def test_no_rules_allow_everyone(self, api_channel):
        assert ip_allowed("198.51.100.1", channel=api_channel)
        assert ip_allowed(None, channel=api_channel)

    def test_global_deny(self, api_channel, webchat_channel):
        rule("deny", "198.51.100.0/24")
        assert not ip_allowed("198.51.100.77", channel=api_channel)
        assert not ip_allowed("198.51.100.77", channel=webchat_channel)
        assert ip_allowed("198.51.101.1", channel=api_channel)

    def test_channel_allow_list_refuses_everyone_else_on_that_channel_only(self, api_channel, webchat_channel):
        rule("allow", "203.0.113.0/28", channel=api_channel)
        assert ip_allowed("203.0.113.5", channel=api_channel)
        assert not ip_allowed("203.0.113.99", channel=api_channel)
        assert not ip_allowed(None, channel=api_channel)  # unknown address: not on the list
        assert ip_allowed("203.0.113.99", channel=webchat_channel)

    def test_deny_beats_allow(self, api_channel):
        rule("allow", "203.0.113.0/24", channel=api_channel)
        rule("deny", "203.0.113.66/32")
        assert not ip_allowed("203.0.113.66", channel=api_channel)
        assert ip_allowed("203.0.113.65", channel=api_channel)

    def test_ipv6(self, api_channel):
        rule("allow", "2001:db8:abcd::/48", channel=api_channel)
        rule("deny", "2001:db8:abcd:ff::/64")
        assert ip_allowed("2001:db8:abcd:1::1", channel=api_channel)
        assert not ip_allowed("2001:db8:abcd:ff::1", channel=api_channel)
        assert not ip_allowed("2001:db8:ffff::1", channel=api_channel)
        assert not ip_allowed("203.0.113.1", channel=api_channel)

    def test_disabled_rules_do_not_count(self, api_channel):
        rule("deny", "0.0.0.0/0", enabled=False)
        assert ip_allowed("198.51.100.1", channel=api_channel)

    def test_bad_cidr_is_a_validation_error_and_networks_are_normalized(self):
        with pytest.raises(ValidationError):
            IpRule(action="deny", cidr="10.0.0.300/8").full_clean()
        assert rule("deny", "10.1.2.3/8").cidr == "10.0.0.0/8"

    def test_published_ranges_replace_only_their_source(self, api_channel, admin_user):
        rule("allow", "192.0.2.1/32", channel=api_channel, source="manual")
        ip_allowlist_replace(channel=api_channel, cidrs=["198.51.100.0/24"], source="wecom", actor=admin_user)
        ip_allowlist_replace(channel=api_channel, cidrs=["203.0.113.0/24", "2001:db8::/32"], source="wecom",
                             actor=admin_user)
        assert sorted(IpRule.objects.filter(channel=api_channel).values_list("cidr", flat=True)) == [
            "192.0.2.1/32", "2001:db8::/32", "203.0.113.0/24"]
        event = AuditEvent.objects.filter(action="ip_rules.replaced").latest("created_at")
        assert event.before == ["198.51.100.0/24"] and event.actor == admin_user


@pytest.mark.django_db
class TestRefusedOverHttp:
    def test_denied_address_gets_403_and_nothing_is_stored(self, api_channel, customer, key_client, assert_error):
        rule("deny", "198.51.100.0/24")
        client, _ = key_client(customer, remote_addr="198.51.100.9")
        assert_error(client.post(URL, {"message": "x"}, format="json"), 403, "ip_forbidden")
        assert not Message.objects.exists()

    def test_allow_list_through_a_trusted_proxy(self, api_channel, customer, key_client, settings, assert_error):
        settings.GATEWAY_TRUSTED_PROXIES = ["10.0.0.0/8"]
        rule("allow", "203.0.113.0/24", channel=api_channel)
        inside, _ = key_client(customer, remote_addr="10.0.0.5", HTTP_X_FORWARDED_FOR="203.0.113.7")
        assert inside.post(URL, {"message": "x"}, format="json").status_code == 202
        # Claiming an allowed address in the header does not help a client outside.
        spoofer, _ = key_client(customer, remote_addr="10.0.0.5", HTTP_X_FORWARDED_FOR="203.0.113.7, 198.51.100.1")
        assert_error(spoofer.post(URL, {"message": "x"}, format="json"), 403, "ip_forbidden")
        direct, _ = key_client(customer, remote_addr="198.51.100.1", HTTP_X_FORWARDED_FOR="203.0.113.7")
        assert_error(direct.post(URL, {"message": "x"}, format="json"), 403, "ip_forbidden")

    def test_refused_webhook_style_sender_creates_no_identity(self, api_channel):
        rule("deny", "198.51.100.0/24", channel=api_channel)
        msg = NormalizedMessage(channel="api", channel_id="api", user_id="ext-9", message="hi")
        with pytest.raises(IpForbidden):
            pipeline.accept(msg, channel=api_channel, client_ip="198.51.100.3")
        assert not ChannelIdentity.objects.exists()


@pytest.mark.django_db(transaction=True)
class TestRefusedOverWebsocket:
    async def test_denied_address_gets_an_error_frame_and_close(self, webchat_channel, open_chat):
        await sync_to_async(rule)("deny", "2001:db8::/32", channel=webchat_channel)
        chat = await open_chat(webchat_channel, client=("2001:db8::7", 40000))
        frame = await chat.receive_json_from(5)
        assert frame == {"type": "error", "code": "ip_forbidden", "message": IpForbidden.default_message}
        assert (await chat.receive_output(5))["type"] == "websocket.close"

    async def test_allowed_address_chats(self, webchat_channel, open_chat):
        await sync_to_async(rule)("allow", "192.0.2.0/24", channel=webchat_channel)
        chat = await open_chat(webchat_channel, client=("192.0.2.10", 40000))
        await chat.send_json_to({"type": "message", "message": "hello"})
        assert (await chat.receive_json_from(5))["type"] == "ack"
        await chat.disconnect()

    async def test_rule_added_while_connected_refuses_the_next_message(self, webchat_channel, open_chat):
        chat = await open_chat(webchat_channel, client=("192.0.2.10", 40000))
        await sync_to_async(rule)("deny", "192.0.2.10/32")
        await chat.send_json_to({"type": "message", "message": "hello", "client_id": "c-9"})
        frame = await chat.receive_json_from(5)
        assert (frame["type"], frame["code"], frame["client_id"]) == ("error", "ip_forbidden", "c-9")
        await chat.disconnect()
        assert not await sync_to_async(Message.objects.exists)()


def test_channel_deleted_rules_go_with_it(db, agent):
    channel = Channel.objects.create(slug="x", name="x", kind="api", default_agent=agent)
    rule("deny", "0.0.0.0/0", channel=channel)
    channel.delete()
    assert not IpRule.objects.exists()

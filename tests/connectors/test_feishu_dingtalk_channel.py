"""What every channel has, on Feishu and DingTalk: limits per channel and IP, routing by kind,
identities per platform user, the admin with write-only secrets."""

import pytest
from django.core.cache import cache
from django.urls import reverse

from apps.agents.models import Agent
from apps.connectors.models import Channel
from apps.conversations.models import Message
from apps.identities.models import ChannelIdentity
from apps.quotas.models import IpRule, QuotaPolicy
from apps.routing.models import Route
from tests.connectors.conftest import make_channel
from tests.connectors.feishu_dingtalk_helpers import (
    DINGTALK,
    FEISHU,
    dingtalk_config,
    dingtalk_message,
    dingtalk_post,
    feishu_config,
    feishu_event,
    feishu_post,
)
from tests.helpers import wait_until

pytestmark = pytest.mark.django_db


@pytest.fixture
def stand_ins(platforms, settings):
    settings.FEISHU_API_BASE_URL = platforms.feishu_base_url
    settings.DINGTALK_API_BASE_URL = platforms.dingtalk_base_url
    settings.DINGTALK_SESSION_WEBHOOK_BASE_URL = platforms.dingtalk_session_base_url
    cache.delete(f"feishu:tenant_access_token:{FEISHU['app_id']}")
    cache.delete(f"dingtalk:access_token:{DINGTALK['app_key']}")
    return platforms


@pytest.fixture
def feishu_channel(agent):
    config, secrets = feishu_config()
    return make_channel("feishu", agent, config=config, secrets=secrets)


@pytest.fixture
def dingtalk_channel(agent):
    config, secrets = dingtalk_config()
    return make_channel("dingtalk", agent, config=config, secrets=secrets)


def test_feishu_rate_limit_acks_and_replies_politely(client, feishu_channel, stand_ins):
    QuotaPolicy.objects.create(scope="channel", channel=feishu_channel, request_rate="1/h")  # no window edge mid-test
    assert feishu_post(client, feishu_channel, feishu_event(text="@_user_1 one")).status_code == 200
    refused = feishu_event(text="@_user_1 two")
    assert feishu_post(client, feishu_channel, refused).status_code == 200  # acked: no redelivery
    assert Message.objects.count() == 1
    [notice] = wait_until(lambda: stand_ins.state.feishu.replies)
    assert notice["message_id"] == refused["event"]["message"]["message_id"] and "Sorry" in notice["text"]


def test_dingtalk_rate_limit_acks_and_replies_politely(client, dingtalk_channel, stand_ins):
    QuotaPolicy.objects.create(scope="channel", channel=dingtalk_channel, request_rate="1/h")  # no window edge mid-test
    base = stand_ins.dingtalk_session_base_url
    assert dingtalk_post(client, dingtalk_channel, dingtalk_message(session_base=base)).status_code == 200
    assert dingtalk_post(client, dingtalk_channel, dingtalk_message(session_base=base)).status_code == 200
    assert Message.objects.count() == 1
    [notice] = wait_until(lambda: stand_ins.state.dingtalk.session_messages)
    assert "Sorry" in notice["content"]


@pytest.mark.parametrize("kind", ["feishu", "dingtalk"])
def test_refused_address_gets_403_before_the_signature_is_checked(client, kind, feishu_channel, dingtalk_channel,
                                                                   stand_ins):
    channel = feishu_channel if kind == "feishu" else dingtalk_channel
    IpRule.objects.create(action="allow", cidr="203.0.113.0/28", channel=channel)
    client.defaults["REMOTE_ADDR"] = "198.51.100.9"
    if kind == "feishu":
        response = feishu_post(client, channel, feishu_event(), signature="forged")
    else:
        response = dingtalk_post(client, channel, dingtalk_message(session_base="x"), sign="forged")
    assert response.status_code == 403 and response.json()["error"]["code"] == "ip_forbidden"


def test_routes_by_channel_kind(client, feishu_channel, dingtalk_channel, stand_ins, llm_model):
    dingtalk_agent = Agent.objects.create(slug="ding", name="Ding", model=llm_model, system_prompt="x")
    Route.objects.create(name="dingtalk kind", priority=1, agent=dingtalk_agent, channel_kind="dingtalk")
    feishu_post(client, feishu_channel, feishu_event())
    dingtalk_post(client, dingtalk_channel, dingtalk_message(session_base=stand_ins.dingtalk_session_base_url))
    agents = {m.conversation.channel.kind: m.agent.slug for m in Message.objects.select_related("agent")}
    assert agents == {"feishu": "assistant", "dingtalk": "ding"}


def test_each_platform_user_is_one_identity_per_channel(client, feishu_channel, dingtalk_channel, stand_ins):
    base = stand_ins.dingtalk_session_base_url
    for sender in ("ou_alice", "ou_bob", "ou_alice"):
        feishu_post(client, feishu_channel, feishu_event(sender=sender))
    for staff in ("alice", "alice"):
        dingtalk_post(client, dingtalk_channel, dingtalk_message(session_base=base, senderStaffId=staff))
    assert sorted(ChannelIdentity.objects.filter(channel=feishu_channel).values_list("external_id", flat=True)) == [
        "ou_alice", "ou_bob"]
    assert list(ChannelIdentity.objects.filter(channel=dingtalk_channel).values_list("external_id", flat=True)) == [
        "alice"]
    alice = ChannelIdentity.objects.get(channel=feishu_channel, external_id="ou_alice").user
    assert Message.objects.filter(direction="in", sender=alice).count() == 2


def test_dashboards_show_the_new_kinds(client, admin_user, feishu_channel, dingtalk_channel, stand_ins):
    from apps.agents.runtime import agent_run
    from apps.logs.request_log import request_log_flush
    from apps.logs.rollups import recent_days, rollup_days

    feishu_post(client, feishu_channel, feishu_event())
    dingtalk_post(client, dingtalk_channel, dingtalk_message(session_base=stand_ins.dingtalk_session_base_url))
    for message in Message.objects.filter(direction="in"):
        agent_run(message.id)
    feishu_post(client, feishu_channel, feishu_event(), signature="0" * 64)
    dingtalk_post(client, dingtalk_channel, dingtalk_message(session_base="x"), sign="forged")
    request_log_flush()
    rollup_days(recent_days())
    client.force_login(admin_user)
    cost = {t.name: t for t in client.get("/dashboard/cost/").context["tables"]}
    assert {row["channel__kind"] for row in cost["channel"].rows} == {"feishu", "dingtalk"}
    errors = {t.name: t for t in client.get("/dashboard/errors/").context["tables"]}
    # (On services the request-log buffer may also flush earlier tests' refusals into this database.)
    assert {(row["channel_kind"], row["rejection"]) for row in errors["refused_requests"].rows} >= {
        ("feishu", "unauthenticated"), ("dingtalk", "unauthenticated")}


class TestAdmin:
    @pytest.fixture
    def staff_client(self, client, admin_user):
        admin_user.is_superuser = True
        admin_user.save()
        client.force_login(admin_user)
        return client

    def form(self, agent, kind, config, **secrets):
        return {"name": kind, "slug": kind, "kind": kind, "enabled": "on", "default_agent": agent.pk,
                "config": config, "allowed_origins": "[]", "visibility": "public",
                "unknown_senders": "create_customer", **secrets}

    def test_adding_a_feishu_channel_stores_its_secrets_encrypted(self, staff_client, agent):
        url = reverse("admin:connectors_channel_add")
        data = self.form(agent, "feishu", '{"app_id": "cli_a1b2c3"}')
        assert staff_client.post(url, data).status_code == 200  # no App Secret, no token or key
        data.update(app_secret="s3cret-app", encrypt_key="s3cret-key", verification_token="s3cret-token")
        assert staff_client.post(url, data).status_code == 302
        channel = Channel.objects.get(slug="feishu")
        assert channel.secrets == {"app_secret": "s3cret-app", "encrypt_key": "s3cret-key",
                                   "verification_token": "s3cret-token"}
        page = staff_client.get(reverse("admin:connectors_channel_change", args=[channel.pk])).content.decode()
        assert "s3cret" not in page and "Stored (hidden)" in page
        assert "Feishu / Lark" in staff_client.get(reverse("admin:connectors_channel_changelist")).content.decode()

    def test_adding_a_dingtalk_channel_needs_its_app_secret(self, staff_client, agent):
        url = reverse("admin:connectors_channel_add")
        data = self.form(agent, "dingtalk", '{"app_key": "dingabc", "robot_code": "dingabc"}')
        assert staff_client.post(url, data).status_code == 200
        data.update(app_secret="s3cret-app")
        assert staff_client.post(url, data).status_code == 302
        assert Channel.objects.get(slug="dingtalk").secrets == {"app_secret": "s3cret-app"}

"""Timestamps from the platforms: one reader (``parse_epoch``) for every connector, and every
webhook refuses a timestamp that is not a time with its normal refusal, never a 500."""
import json
import math
from urllib.parse import quote

import pytest

from apps.connectors.base import EPOCH_MAX_SECONDS, parse_epoch
from tests.connectors.aibot_helpers import AIBOT, aibot_post, text_callback
from tests.connectors.conftest import make_channel
from tests.connectors.connector_helpers import (
    CRM_SECRET,
    SLACK_SECRET,
    WECOM,
    assert_refused,
    crm_post,
    slack_event,
    slack_post,
    wecom_post,
    wecom_text_xml,
)
from tests.connectors.crm_preset_helpers import HUBSPOT_CLIENT_SECRET, ZENDESK_SECRET, hubspot_post, zendesk_post
from tests.connectors.feishu_dingtalk_helpers import dingtalk_config, dingtalk_post, feishu_config, feishu_post

NOT_TIMES = ["", "abc", "1e400", "99999999999999999999", "1" + "0" * 400, "9" * 5000, "-1", "-1700000000",
             "NaN", "inf", "-inf", "Infinity", "1_700_000_000", "0x65", " 1700000000", "²", "١٧٠٠"]
NOT_HEADER_TIMES = [*NOT_TIMES, "1.5"]  # a signature's timestamp is a whole number


class TestParseEpoch:
    @pytest.mark.parametrize("value, unit, expected", [
        ("1700000000", 1, 1700000000.0), (1700000000, 1, 1700000000.0), (1700000000.25, 1, 1700000000.25),
        ("1700000000.123456", 1, 1700000000.123456), ("1700000000123", 1000, 1700000000.123),
        ("0", 1, 0.0), (str(EPOCH_MAX_SECONDS), 1, float(EPOCH_MAX_SECONDS)),
    ])
    def test_times(self, value, unit, expected):
        assert parse_epoch(value, unit=unit) == pytest.approx(expected)

    @pytest.mark.parametrize("value", NOT_TIMES + [
        None, True, False, [], {}, -1, 10**400, EPOCH_MAX_SECONDS + 1, math.nan, math.inf, -math.inf, 1e400,
        str(EPOCH_MAX_SECONDS + 1), "1.", ".5", "1.2.3",
    ])
    def test_anything_else_is_none(self, value):
        assert parse_epoch(value) is None

    def test_integer_only_when_asked(self):
        assert parse_epoch("1700000000.5", integer=True) is None
        assert parse_epoch(1700000000.5, integer=True) is None
        assert parse_epoch("1700000000", integer=True) == 1700000000.0


def post_with_timestamp(client, kind: str, channel, stamp: str):
    """A request to ``channel`` as its platform sends one, the timestamp set to ``stamp``."""
    if kind == "slack":
        return slack_post(client, channel, slack_event("message_im.json"), timestamp=stamp)
    if kind == "crm":
        return crm_post(client, channel, {"id": "e1", "user_id": "u1", "message": "hi"}, timestamp=stamp)
    if kind == "feishu":
        return feishu_post(client, channel, {"schema": "2.0"}, timestamp=stamp)
    if kind == "dingtalk":
        return dingtalk_post(client, channel, {"msgtype": "text"}, timestamp=stamp)
    if kind == "hubspot":
        return hubspot_post(client, channel, {"id": "e1"}, timestamp=stamp)
    if kind == "zendesk":
        return zendesk_post(client, channel, {"id": "e1"}, timestamp=stamp)
    if kind == "wecom":
        return wecom_post(client, channel, wecom_text_xml(), timestamp=quote(stamp))
    return aibot_post(client, channel, text_callback(), timestamp=quote(stamp))


def channel_of(kind: str, agent):
    if kind == "feishu":
        config, secrets = feishu_config()
    elif kind == "dingtalk":
        config, secrets = dingtalk_config()
    else:
        config, secrets = {
            "slack": ({}, {"signing_secret": SLACK_SECRET, "bot_token": "xoxb-test"}),
            "crm": ({}, {"secret": CRM_SECRET}),
            "hubspot": ({}, {"client_secret": HUBSPOT_CLIENT_SECRET}),
            "zendesk": ({}, {"secret": ZENDESK_SECRET}),
            "wecom": ({"corp_id": WECOM["corp_id"], "agent_id": WECOM["agent_id"]},
                      {k: WECOM[k] for k in ("token", "encoding_aes_key", "secret")}),
            "wecom_aibot": ({"bot_id": AIBOT["bot_id"]},
                            {"token": AIBOT["token"], "encoding_aes_key": AIBOT["encoding_aes_key"]}),
        }[kind]
    return make_channel(kind, agent, config=config, secrets=secrets)


KINDS = ["slack", "crm", "feishu", "dingtalk", "hubspot", "zendesk", "wecom", "wecom_aibot"]


@pytest.mark.django_db
@pytest.mark.parametrize("kind", KINDS)
def test_a_timestamp_that_is_not_a_time_is_refused(client, agent, kind):
    channel = channel_of(kind, agent)
    for stamp in NOT_HEADER_TIMES:
        response = post_with_timestamp(client, kind, channel, stamp)
        assert response.status_code in (400, 401), (stamp, response.status_code, response.content[:200])
        assert response.json()["error"]["code"] in ("unauthenticated", "invalid_request"), stamp


@pytest.mark.django_db
def test_a_slack_event_whose_ts_is_not_a_time_is_a_bad_request(client, agent):
    channel = channel_of("slack", agent)
    for ts in ("abc", "nan", "inf", "1e400", "-1"):
        payload = slack_event("message_im.json", ts=ts)
        assert_refused(slack_post(client, channel, payload), 400, code="invalid_request")


@pytest.mark.django_db
def test_a_crm_timestamp_field_that_is_not_a_time_falls_back_to_now(client, agent, platforms):
    from apps.conversations.models import Message

    channel = channel_of("crm", agent)
    for n, stamp in enumerate((10**400, -5, "soon", [1])):
        body = json.dumps({"id": f"e{n}", "user_id": "u1", "message": "hi", "timestamp": stamp}).encode()
        response = crm_post(client, channel, None, body=body)
        assert response.status_code == 202, response.content
    stamps = list(Message.objects.values_list("channel_timestamp", flat=True))
    assert len(stamps) == 4 and all(0 < s < EPOCH_MAX_SECONDS for s in stamps)

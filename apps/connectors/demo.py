"""Demo webhook channels for ``seed_demo``: one of each kind, with known test secrets.

The secrets are derived from SECRET_KEY (so re-seeding keeps them and scripts can read them from
``seed_demo --json``); they are demo values, never for a real workspace.
"""
from __future__ import annotations

import base64
import hashlib
import hmac

from django.conf import settings

from .models import Channel

DEMO_SLACK_BOT_USER_ID = "U0GATEWAYBOT"
DEMO_WECOM_CORP_ID = "wwdemo0123456789"
DEMO_WECOM_AGENT_ID = "1000002"
DEMO_FEISHU_APP_ID = "cli_a0demo0gateway00"
DEMO_FEISHU_BOT_OPEN_ID = "ou_0demo0gateway0bot0000000000000"
DEMO_DINGTALK_APP_KEY = "dingdemo0gateway0app"
# fake_platforms' default address (manage.py fake_platforms).
DEMO_CRM_CALLBACK_URL = "http://127.0.0.1:8002/crm/callback"


def demo_secret(name: str, length: int = 32) -> str:
    return hmac.new(settings.SECRET_KEY.encode(), f"demo-channel:{name}".encode(), hashlib.sha256).hexdigest()[:length]


def _upsert(slug: str, kind: str, name: str, *, agent, config: dict, secrets: dict) -> Channel:
    channel = Channel.objects.filter(slug=slug).first() or Channel(slug=slug)
    channel.kind, channel.name, channel.enabled, channel.default_agent, channel.config = kind, name, True, agent, config
    channel.secrets_ciphertext = ""
    channel.set_secrets(**secrets)
    channel.save()
    return channel


def demo_webhook_channels(*, agent) -> dict[str, dict]:
    """Create or refresh the demo Slack, WeCom, WeCom robot and CRM channels; returns what
    ``seed_demo --json`` prints for each (the DESIGN.md shape)."""
    slack = {"signing_secret": demo_secret("slack-signing"), "bot_token": f"xoxb-demo-{demo_secret('slack-bot', 24)}"}
    _upsert("slack", "slack", "Slack", agent=agent, config={"bot_user_id": DEMO_SLACK_BOT_USER_ID}, secrets=slack)
    aes_key = base64.b64encode(hashlib.sha256(demo_secret("wecom-aes").encode()).digest()).decode().rstrip("=")
    wecom = {"token": demo_secret("wecom-token", 16), "encoding_aes_key": aes_key, "secret": demo_secret("wecom-app")}
    _upsert("wecom", "wecom", "WeCom", agent=agent,
            config={"corp_id": DEMO_WECOM_CORP_ID, "agent_id": DEMO_WECOM_AGENT_ID}, secrets=wecom)
    _upsert("wecom-robot", "wecom_robot", "WeCom group robot", agent=agent, config={"msgtype": "markdown"},
            secrets={"webhook_key": demo_secret("wecom-robot")})
    crm = {"secret": demo_secret("crm")}
    _upsert("crm", "crm", "CRM webhook", agent=agent, config={"callback_url": DEMO_CRM_CALLBACK_URL}, secrets=crm)
    feishu = {"app_secret": demo_secret("feishu-app"), "verification_token": demo_secret("feishu-token"),
              "encrypt_key": demo_secret("feishu-encrypt")}
    _upsert("feishu", "feishu", "Feishu / Lark", agent=agent,
            config={"app_id": DEMO_FEISHU_APP_ID, "bot_open_id": DEMO_FEISHU_BOT_OPEN_ID}, secrets=feishu)
    dingtalk = {"app_secret": demo_secret("dingtalk-app")}
    _upsert("dingtalk", "dingtalk", "DingTalk robot", agent=agent,
            config={"app_key": DEMO_DINGTALK_APP_KEY, "robot_code": DEMO_DINGTALK_APP_KEY}, secrets=dingtalk)
    return {
        "feishu": {"slug": "feishu", "app_id": DEMO_FEISHU_APP_ID, **feishu},
        "dingtalk": {"slug": "dingtalk", "app_key": DEMO_DINGTALK_APP_KEY, **dingtalk,
                     "robot_code": DEMO_DINGTALK_APP_KEY},
        "slack": {"slug": "slack", **slack, "bot_user_id": DEMO_SLACK_BOT_USER_ID},
        "wecom": {"slug": "wecom", **wecom, "corp_id": DEMO_WECOM_CORP_ID, "agent_id": DEMO_WECOM_AGENT_ID},
        "crm": {"slug": "crm", **crm, "callback_url": DEMO_CRM_CALLBACK_URL},
    }

"""Demo webhook channels for ``seed_demo``: one of each kind, with test secrets.

The secrets are derived from this install's random demo seed (``DemoSeed``, stored encrypted), so
re-seeding keeps them and scripts can read them from ``seed_demo --json``, while nobody can compute
them from anything public. Seeding never overwrites what staff changed: an existing channel keeps
its secrets, its config values and its ``enabled`` flag; only missing values are filled in.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

from .models import Channel, DemoSeed
from .secrets import secrets_decrypt, secrets_encrypt

DEMO_SLACK_BOT_USER_ID = "U0GATEWAYBOT"
DEMO_WECOM_CORP_ID = "wwdemo0123456789"
DEMO_WECOM_AGENT_ID = "1000002"
DEMO_FEISHU_APP_ID = "cli_a0demo0gateway00"
DEMO_FEISHU_BOT_OPEN_ID = "ou_0demo0gateway0bot0000000000000"
DEMO_DINGTALK_APP_KEY = "dingdemo0gateway0app"
# fake_platforms' default address (manage.py fake_platforms).
DEMO_CRM_CALLBACK_URL = "http://127.0.0.1:8002/crm/callback"


def demo_seed() -> str:
    """This install's demo seed, created (256 random bits) by the first call."""
    row, _ = DemoSeed.objects.get_or_create(
        pk=1, defaults={"seed_ciphertext": secrets_encrypt({"seed": secrets.token_hex(32)})})
    return secrets_decrypt(row.seed_ciphertext)["seed"]


def demo_secret(name: str, length: int = 32) -> str:
    return demo_secret_from(demo_seed(), name, length)


def demo_secret_from(seed: str, name: str, length: int = 32) -> str:
    """The demo secret ``name`` of the install whose seed is ``seed``."""
    return hmac.new(seed.encode(), f"demo-channel:{name}".encode(), hashlib.sha256).hexdigest()[:length]


def _upsert(slug: str, kind: str, name: str, *, agent, config: dict, secrets: dict) -> Channel:
    """Create the demo channel, or fill in only what an existing one lacks (see the module doc)."""
    channel = Channel.objects.filter(slug=slug).first()
    if channel is None:
        channel = Channel(slug=slug, kind=kind, name=name, enabled=True, default_agent=agent, config=config)
        channel.set_secrets(**secrets)
        channel.save()
        return channel
    stored = channel.secrets
    missing = {key: value for key, value in secrets.items() if not stored.get(key)}
    config_missing = {key: value for key, value in config.items() if key not in channel.config}
    if missing or config_missing:
        channel.config = {**channel.config, **config_missing}
        channel.set_secrets(**missing)
        channel.save(update_fields=["config", "secrets_ciphertext", "updated_at"])
    return channel


def _printed(channel: Channel, *config_keys: str) -> dict:
    """What ``seed_demo --json`` prints for ``channel``: its slug, stored secrets and config values."""
    return {"slug": channel.slug, **channel.secrets, **{key: channel.config.get(key) for key in config_keys}}


def demo_webhook_channels(*, agent) -> dict[str, dict]:
    """Create or refresh the demo Slack, WeCom, WeCom robot and CRM channels; returns what
    ``seed_demo --json`` prints for each (the shape in docs/channels/README.md)."""
    slack = {"signing_secret": demo_secret("slack-signing"), "bot_token": f"xoxb-demo-{demo_secret('slack-bot', 24)}"}
    slack_channel = _upsert("slack", "slack", "Slack", agent=agent,
                            config={"bot_user_id": DEMO_SLACK_BOT_USER_ID}, secrets=slack)
    aes_key = base64.b64encode(hashlib.sha256(demo_secret("wecom-aes").encode()).digest()).decode().rstrip("=")
    wecom = {"token": demo_secret("wecom-token", 16), "encoding_aes_key": aes_key, "secret": demo_secret("wecom-app")}
    wecom_channel = _upsert("wecom", "wecom", "WeCom", agent=agent,
                            config={"corp_id": DEMO_WECOM_CORP_ID, "agent_id": DEMO_WECOM_AGENT_ID}, secrets=wecom)
    _upsert("wecom-robot", "wecom_robot", "WeCom group robot", agent=agent, config={"msgtype": "markdown"},
            secrets={"webhook_key": demo_secret("wecom-robot")})
    crm_channel = _upsert("crm", "crm", "CRM webhook", agent=agent, config={"callback_url": DEMO_CRM_CALLBACK_URL},
                          secrets={"secret": demo_secret("crm")})
    feishu = {"app_secret": demo_secret("feishu-app"), "verification_token": demo_secret("feishu-token"),
              "encrypt_key": demo_secret("feishu-encrypt")}
    feishu_channel = _upsert("feishu", "feishu", "Feishu / Lark", agent=agent,
                             config={"app_id": DEMO_FEISHU_APP_ID, "bot_open_id": DEMO_FEISHU_BOT_OPEN_ID},
                             secrets=feishu)
    dingtalk_channel = _upsert("dingtalk", "dingtalk", "DingTalk robot", agent=agent,
                               config={"app_key": DEMO_DINGTALK_APP_KEY, "robot_code": DEMO_DINGTALK_APP_KEY},
                               secrets={"app_secret": demo_secret("dingtalk-app")})
    return {
        "slack": _printed(slack_channel, "bot_user_id"),
        "wecom": _printed(wecom_channel, "corp_id", "agent_id"),
        "crm": _printed(crm_channel, "callback_url"),
        "feishu": _printed(feishu_channel, "app_id"),
        "dingtalk": _printed(dingtalk_channel, "app_key", "robot_code"),
    }

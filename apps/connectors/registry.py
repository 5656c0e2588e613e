"""Channel kind → connector class, imported lazily on first use.

To add a connector: write a ``Connector`` subclass in its own module and add one line here
(see CONTRIBUTING.md).
"""
from __future__ import annotations

from functools import cache
from importlib import import_module

CONNECTORS: dict[str, tuple[str, str]] = {
    # kind: (label, dotted path of the connector class)
    "api": ("API", "apps.connectors.api.ApiConnector"),
    "webchat": ("Web chat", "apps.connectors.webchat.WebchatConnector"),
    "slack": ("Slack", "apps.connectors.slack.SlackConnector"),
    "wecom": ("WeCom app", "apps.connectors.wecom.WeComConnector"),
    "wecom_robot": ("WeCom group robot (outbound only)", "apps.connectors.wecom_robot.WeComRobotConnector"),
    "crm": ("CRM webhook", "apps.connectors.crm.CrmConnector"),
    "feishu": ("Feishu / Lark", "apps.connectors.feishu.FeishuConnector"),
    "dingtalk": ("DingTalk robot", "apps.connectors.dingtalk.DingTalkConnector"),
    "hubspot": ("HubSpot (signed webhook)", "apps.connectors.crm_presets.HubSpotConnector"),
    "zendesk": ("Zendesk (signed webhook)", "apps.connectors.crm_presets.ZendeskConnector"),
    "wecom_aibot": ("WeCom AI bot (streamed replies)", "apps.connectors.wecom_aibot.WeComAiBotConnector"),
}

KIND_CHOICES = [(kind, label) for kind, (label, _path) in CONNECTORS.items()]


@cache
def connector_class(kind: str):
    module_path, _, class_name = CONNECTORS[kind][1].rpartition(".")
    return getattr(import_module(module_path), class_name)


def connector_for(channel):
    """The connector instance serving a configured ``Channel``."""
    return connector_class(channel.kind)(channel)

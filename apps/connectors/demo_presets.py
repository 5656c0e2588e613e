"""Demo HubSpot, Zendesk and WeCom AI bot channels for ``seed_demo``, beside demo.py's (same
derivation of demo secrets, so re-seeding keeps them and ``seed_demo --json`` prints them)."""
from __future__ import annotations

import base64
import hashlib

from .demo import DEMO_CRM_CALLBACK_URL, _printed, _upsert, demo_secret

DEMO_AIBOT_ID = "aibdemo0123456789"


def demo_preset_channels(*, agent) -> dict[str, dict]:
    """Create or refresh the demo HubSpot, Zendesk and WeCom AI bot channels; returns what
    ``seed_demo --json`` prints for each (the shape in docs/channels/README.md)."""
    hubspot = {"client_secret": demo_secret("hubspot-client")}
    hubspot_channel = _upsert("hubspot", "hubspot", "HubSpot", agent=agent,
                              config={"callback_url": DEMO_CRM_CALLBACK_URL}, secrets=hubspot)
    zendesk = {"secret": demo_secret("zendesk-signing")}
    zendesk_channel = _upsert("zendesk", "zendesk", "Zendesk", agent=agent,
                              config={"callback_url": DEMO_CRM_CALLBACK_URL}, secrets=zendesk)
    aes_key = base64.b64encode(hashlib.sha256(demo_secret("wecom-aibot-aes").encode()).digest()).decode().rstrip("=")
    aibot = {"token": demo_secret("wecom-aibot-token", 16), "encoding_aes_key": aes_key}
    aibot_channel = _upsert("wecom-aibot", "wecom_aibot", "WeCom AI bot", agent=agent,
                            config={"bot_id": DEMO_AIBOT_ID}, secrets=aibot)
    return {"hubspot": _printed(hubspot_channel), "zendesk": _printed(zendesk_channel),
            "wecom_aibot": _printed(aibot_channel, "bot_id")}

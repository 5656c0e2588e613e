"""Demo HubSpot, Zendesk and WeCom AI bot channels for ``seed_demo``, beside demo.py's (same
derivation of demo secrets, so re-seeding keeps them and ``seed_demo --json`` prints them)."""
from __future__ import annotations

from .demo import DEMO_CRM_CALLBACK_URL, _upsert, demo_secret


def demo_preset_channels(*, agent) -> dict[str, dict]:
    """Create or refresh the demo HubSpot and Zendesk channels; returns what ``seed_demo --json``
    prints for each (the DESIGN.md shape)."""
    hubspot = {"client_secret": demo_secret("hubspot-client")}
    _upsert("hubspot", "hubspot", "HubSpot", agent=agent, config={"callback_url": DEMO_CRM_CALLBACK_URL},
            secrets=hubspot)
    zendesk = {"secret": demo_secret("zendesk-signing")}
    _upsert("zendesk", "zendesk", "Zendesk", agent=agent, config={"callback_url": DEMO_CRM_CALLBACK_URL},
            secrets=zendesk)
    return {"hubspot": {"slug": "hubspot", **hubspot}, "zendesk": {"slug": "zendesk", **zendesk}}

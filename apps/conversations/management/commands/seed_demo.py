"""Demo data, idempotent: roles, users, API keys, provider, model, agents and channels."""
from __future__ import annotations

import hashlib
import hmac
import json
from decimal import Decimal

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from django.db import transaction

from apps.agents.models import Agent, LLMModel, Provider, Visibility
from apps.connectors.demo import demo_webhook_channels
from apps.connectors.demo_presets import demo_preset_channels
from apps.connectors.models import Channel
from apps.identities.models import ApiKey, hash_api_key
from apps.identities.roles import Role, ensure_role_groups, grant_role_permissions

DEMO_STAFF_USERNAME = "staff"
DEMO_STAFF_PASSWORD = "gateway-demo"
DEMO_USERS = {Role.CUSTOMER: "demo-customer", Role.EMPLOYEE: "demo-employee", Role.ADMIN: "demo-admin"}


def demo_api_key(role: str) -> tuple[str, str]:
    """(prefix, raw key) derived from SECRET_KEY, so re-seeding prints the same working key."""
    digest = hmac.new(settings.SECRET_KEY.encode(), f"demo-api-key:{role}".encode(), hashlib.sha256)
    hexed = digest.hexdigest()
    prefix = hexed[:8]
    return prefix, f"gw_{prefix}_{hexed[8:56]}"


class Command(BaseCommand):
    help = "Create (or refresh) the demo channels, agents, roles, users and API keys."

    def add_arguments(self, parser):
        parser.add_argument("--json", action="store_true", help="Print what a script needs as JSON.")

    @transaction.atomic
    def handle(self, *args, **options):
        self.stderr.write("seed_demo: roles and staff user...")  # progress on stderr: --json keeps stdout pure
        groups = ensure_role_groups()
        grant_role_permissions(groups)
        User = get_user_model()

        staff, _ = User.objects.get_or_create(username=DEMO_STAFF_USERNAME)
        staff.is_staff = staff.is_superuser = True
        staff.set_password(DEMO_STAFF_PASSWORD)
        staff.save()
        staff.groups.add(groups[Role.ADMIN])

        api_keys = {}
        for role, username in DEMO_USERS.items():
            user, _ = User.objects.get_or_create(username=username, defaults={"first_name": role.title()})
            user.groups.add(groups[role])
            prefix, raw_key = demo_api_key(role)
            ApiKey.objects.update_or_create(
                prefix=prefix,
                defaults={"user": user, "name": "demo", "key_hash": hash_api_key(raw_key), "revoked_at": None},
            )
            api_keys[role] = raw_key

        self.stderr.write("seed_demo: provider, model and agents...")
        model_name = "gpt-4o-mini" if settings.OPENAI_API_KEY else "fake-gpt"
        provider, _ = Provider.objects.update_or_create(
            slug="default",
            defaults={"name": "Default (OPENAI_BASE_URL)", "base_url": settings.OPENAI_BASE_URL,
                      "api_key_env": "OPENAI_API_KEY", "timeout_seconds": settings.LLM_TIMEOUT_SECONDS},
        )
        model, _ = LLMModel.objects.update_or_create(
            provider=provider, name=model_name,
            defaults={"input_price_per_1k": Decimal("0.00015"), "output_price_per_1k": Decimal("0.0006"),
                      "context_window": 128000},
        )
        agents = {}
        for slug, name, visibility, prompt in [
            ("assistant", "Assistant", Visibility.PUBLIC, "You are a helpful customer assistant."),
            ("internal-helper", "Internal helper", Visibility.INTERNAL, "You help employees."),
            ("ops", "Operations", Visibility.ADMIN, "You help administrators run the gateway."),
        ]:
            agents[slug], _ = Agent.objects.update_or_create(
                slug=slug,
                defaults={"name": name, "visibility": visibility, "system_prompt": prompt, "model": model},
            )

        seed_demo_tools_and_routes(agents)

        self.stderr.write("seed_demo: channels...")
        channels = {}
        for kind, slug, name in [("api", "api", "API"), ("webchat", "web", "Web chat")]:
            channels[kind], _ = Channel.objects.update_or_create(
                slug=slug,
                defaults={"kind": kind, "name": name, "enabled": True, "default_agent": agents["assistant"]},
            )

        webhook_channels = demo_webhook_channels(agent=agents["assistant"])
        webhook_channels.update(demo_preset_channels(agent=agents["assistant"]))

        summary = {
            "staff": {"username": DEMO_STAFF_USERNAME, "password": DEMO_STAFF_PASSWORD},
            "api_keys": api_keys,
            "channels": {**{kind: {"slug": channel.slug} for kind, channel in channels.items()}, **webhook_channels},
            "agents": sorted(agents),
        }
        if options["json"]:
            self.stdout.write(json.dumps(summary, indent=2))
        else:
            self.stdout.write(
                f"Demo ready: staff {DEMO_STAFF_USERNAME}/{DEMO_STAFF_PASSWORD}, "
                f"channels {', '.join(c.slug for c in channels.values())}, agents {', '.join(sorted(agents))}."
            )


def seed_demo_tools_and_routes(agents: dict) -> None:
    """Built-in tools on the demo agents, and command routes: ``/staff ...`` and ``/ops ...``."""
    from apps.agents.services import tool_sync
    from apps.routing.models import Route

    tools = {tool.slug: tool for tool in tool_sync()}
    agents["assistant"].tools.set([tools["current_time"]])
    agents["internal-helper"].tools.set([tools[s] for s in ("current_time", "search_conversations", "customer_lookup")])
    agents["ops"].tools.set([tools[s] for s in ("current_time", "usage_report", "block_user")])
    for priority, command, agent in [(10, "staff", "internal-helper"), (20, "ops", "ops")]:
        Route.objects.update_or_create(
            name=f"/{command} command",
            defaults={"priority": priority, "command": command, "agent": agents[agent], "reroutes": True},
        )

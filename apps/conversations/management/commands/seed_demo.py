"""Demo data, idempotent: roles, users, API keys, provider, model, agents and channels.

Run only when asked (``make run``, ``SEED_DEMO=1`` in docker-compose). The demo secrets (API keys,
the staff password, channel secrets) come from this install's random demo seed
(``apps.connectors.demo.demo_seed``), never from anything public. Seeding creates what is missing
and never undoes what staff did: a disabled user stays disabled, a changed password stays changed,
a revoked key stays revoked (``--json`` then prints null for it), a disabled channel stays disabled.
"""
from __future__ import annotations

import json
from decimal import Decimal

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from django.db import transaction
from django.utils import timezone

from apps.agents.models import Agent, LLMModel, Provider, Visibility
from apps.agents.services import tool_sync
from apps.connectors.demo import demo_secret, demo_secret_from, demo_webhook_channels
from apps.connectors.demo_presets import demo_preset_channels
from apps.connectors.models import Channel
from apps.identities.models import ApiKey, hash_api_key
from apps.identities.roles import Role, ensure_role_groups, grant_role_permissions
from apps.logs.models import AuditEvent
from apps.routing.models import Route
from gateway_project.config_cache import config_changed

DEMO_STAFF_USERNAME = "staff"
DEMO_USERS = {Role.CUSTOMER: "demo-customer", Role.EMPLOYEE: "demo-employee", Role.ADMIN: "demo-admin"}


def demo_api_key(role: str) -> tuple[str, str]:
    """(prefix, raw key) derived from the install's demo seed, so re-seeding prints the same working key."""
    hexed = demo_secret(f"api-key:{role}", 64)
    prefix = hexed[:8]
    return prefix, f"gw_{prefix}_{hexed[8:56]}"


def demo_key_rotated(prefix: str) -> bool:
    """Whether staff rotated the demo key that had ``prefix`` (no key holds it now): its derived
    secret, printed by seed_demo --json, may be why. Like a revoked one, it is not created again
    (the derived secret would work again) and the rotated key is not revoked as a stale demo key."""
    return not ApiKey.objects.filter(prefix=prefix).exists() and (
        ApiKey.objects.filter(previous_prefix=prefix).exists()
        or AuditEvent.objects.filter(action="apikey.rotated", before__prefix=prefix).exists())


def demo_staff_password(seed: str | None = None) -> str:
    """The demo ``staff`` password of this install (or of the install whose seed is ``seed``)."""
    return demo_secret_from(seed, "staff-password", 24) if seed else demo_secret("staff-password", 24)


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

        staff, created = User.objects.get_or_create(username=DEMO_STAFF_USERNAME)
        if created:
            staff.is_staff = staff.is_superuser = True
            staff.set_password(demo_staff_password())
            staff.save()
            staff.groups.add(groups[Role.ADMIN])
        # A password staff changed is theirs: not printed, not reset.
        staff_password = demo_staff_password() if staff.check_password(demo_staff_password()) else None

        api_keys = {}
        for role, username in DEMO_USERS.items():
            user, created = User.objects.get_or_create(username=username, defaults={"first_name": role.title()})
            if created:
                user.groups.add(groups[role])
            prefix, raw_key = demo_api_key(role)
            if demo_key_rotated(prefix):
                api_keys[role] = None  # staff gave it a secret of their own: not brought back, not revoked
                continue
            key, _ = ApiKey.objects.get_or_create(
                prefix=prefix, defaults={"user": user, "name": "demo", "key_hash": hash_api_key(raw_key)})
            # Demo keys of an earlier seed (derived from SECRET_KEY, which was public) are revoked.
            if ApiKey.objects.filter(user=user, name="demo", revoked_at__isnull=True).exclude(pk=key.pk).update(
                    revoked_at=timezone.now()):
                config_changed()  # running processes drop the keys they keep (update() sends no signal)
            usable = key.revoked_at is None and key.user_id == user.pk and key.key_hash == hash_api_key(raw_key)
            api_keys[role] = raw_key if usable else None

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
            channels[kind], _ = Channel.objects.get_or_create(
                slug=slug,
                defaults={"kind": kind, "name": name, "enabled": True, "default_agent": agents["assistant"]},
            )

        webhook_channels = demo_webhook_channels(agent=agents["assistant"])
        webhook_channels.update(demo_preset_channels(agent=agents["assistant"]))

        summary = {
            "staff": {"username": DEMO_STAFF_USERNAME, "password": staff_password},
            "api_keys": api_keys,
            "channels": {**{kind: {"slug": channel.slug} for kind, channel in channels.items()}, **webhook_channels},
            "agents": sorted(agents),
        }
        if options["json"]:
            self.stdout.write(json.dumps(summary, indent=2))
        else:
            self.stdout.write(
                f"Demo ready: staff {DEMO_STAFF_USERNAME} (password: seed_demo --json), "
                f"channels {', '.join(c.slug for c in channels.values())}, agents {', '.join(sorted(agents))}."
            )


def seed_demo_tools_and_routes(agents: dict) -> None:
    """Built-in tools on the demo agents, and command routes: ``/staff ...`` and ``/ops ...``."""
    tools = {tool.slug: tool for tool in tool_sync()}
    agents["assistant"].tools.set([tools["current_time"]])
    agents["internal-helper"].tools.set([tools[s] for s in ("current_time", "search_conversations", "customer_lookup")])
    agents["ops"].tools.set([tools[s] for s in ("current_time", "usage_report", "block_user")])
    for priority, command, agent in [(10, "staff", "internal-helper"), (20, "ops", "ops")]:
        Route.objects.update_or_create(
            name=f"/{command} command",
            defaults={"priority": priority, "command": command, "agent": agents[agent], "reroutes": True},
        )

"""Installs seeded before demo secrets were per install: retire what anyone could compute.

Until then seed_demo gave ``staff`` the published password "gateway-demo" and derived the demo API
keys from SECRET_KEY, whose defaults were published. Upgraded installs run migrations but (now) not
seed_demo, so this does it once:
- ``staff`` still on "gateway-demo" gets this install's demo password (``seed_demo --json`` prints it);
- demo API keys derived from a published SECRET_KEY placeholder are revoked.
Demo channel secrets are left alone (a channel may be live): docs/security.md says to replace them.
"""
import hashlib
import hmac
import secrets

from django.db import migrations
from django.utils import timezone

# Frozen copies: what this migration retires must not change when the code does.
PUBLISHED_STAFF_PASSWORD = "gateway-demo"
PUBLISHED_SECRET_KEYS = (
    "dev-only-insecure-secret-key-change-me-in-production",
    "change-me-in-production",
    "change-me-to-a-long-random-string",
)
DEMO_ROLES = ("customer", "employee", "admin")


def retire_published_demo_secrets(apps, schema_editor):
    from django.contrib.auth.hashers import check_password, make_password

    from apps.connectors.secrets import secrets_decrypt, secrets_encrypt
    from apps.conversations.management.commands.seed_demo import demo_staff_password

    ApiKey = apps.get_model("identities", "ApiKey")
    User = apps.get_model("identities", "User")
    DemoSeed = apps.get_model("connectors", "DemoSeed")

    prefixes = [hmac.new(key.encode(), f"demo-api-key:{role}".encode(), hashlib.sha256).hexdigest()[:8]
                for key in PUBLISHED_SECRET_KEYS for role in DEMO_ROLES]
    revoked = ApiKey.objects.filter(name="demo", prefix__in=prefixes, revoked_at__isnull=True).update(
        revoked_at=timezone.now())

    staff = User.objects.filter(username="staff").first()
    if staff is not None and check_password(PUBLISHED_STAFF_PASSWORD, staff.password):
        row, _ = DemoSeed.objects.get_or_create(
            pk=1, defaults={"seed_ciphertext": secrets_encrypt({"seed": secrets.token_hex(32)})})
        staff.password = make_password(demo_staff_password(secrets_decrypt(row.seed_ciphertext)["seed"]))
        staff.save(update_fields=["password"])
    if revoked:
        from gateway_project.config_cache import config_changed

        config_changed()  # running processes drop the keys they keep (no save signal on update())


class Migration(migrations.Migration):

    dependencies = [
        ("connectors", "0005_demo_seed"),
        ("identities", "0002_blocks_merges_key_scopes"),
    ]

    operations = [
        migrations.RunPython(retire_published_demo_secrets, migrations.RunPython.noop),
    ]

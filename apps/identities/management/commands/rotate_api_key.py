import math

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from apps.identities.models import ApiKey
from apps.identities.services import KeyNotRotated, api_key_rotate


class Command(BaseCommand):
    help = ("Give an API key a new secret and print it once; the old one keeps working for a grace "
            "period. The key's owner, name, expiry, scopes and quota policy stay.")

    def add_arguments(self, parser):
        parser.add_argument("prefix", help="The key's prefix: the part after gw_ (gw_<prefix>_…).")
        parser.add_argument(
            "--grace-hours", type=float, default=None,
            help="How long the old secret keeps working (0: it stops now; "
                 "default: GATEWAY_API_KEY_ROTATION_GRACE_SECONDS).")

    def handle(self, *args, prefix: str, grace_hours, **options):
        prefix = prefix.removeprefix("gw_").split("_")[0]
        if grace_hours is not None and not math.isfinite(grace_hours):  # nan, inf: no number of seconds
            raise CommandError("--grace-hours must be a number of hours.")
        grace_seconds = (settings.GATEWAY_API_KEY_ROTATION_GRACE_SECONDS if grace_hours is None
                         else round(grace_hours * 3600))
        key = ApiKey.objects.filter(prefix=prefix).first()
        if key is None:
            replaced = ApiKey.objects.filter(previous_prefix=prefix).exists() if prefix else False
            raise CommandError(f"No API key has the prefix {prefix!r}"
                               + (" (it was rotated since: name its current prefix)." if replaced else "."))
        old = key.masked
        try:
            raw_key = api_key_rotate(key=key, actor=None, grace_seconds=grace_seconds)
        except KeyNotRotated as refused:
            raise CommandError(str(refused)) from refused
        until = (f"until {key.previous_valid_until:%Y-%m-%d %H:%M} UTC" if key.previous_valid_until
                 else "no longer")
        self.stderr.write(f"API key {old} is now {key.masked} ({key.user}); the old secret works {until}. "
                          "Store the new key now, it is not shown again:")
        self.stdout.write(raw_key)

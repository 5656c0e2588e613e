from django.core.management.base import BaseCommand, CommandError

from apps.identities.models import ApiKey
from apps.identities.services import api_key_end_grace


class Command(BaseCommand):
    help = ("Stop accepting the old secret of a rotated API key now, before its grace period ends "
            "(its clients have moved to the new one, or it leaked). Prints when it was last used.")

    def add_arguments(self, parser):
        parser.add_argument("prefix", help="The key's current prefix: the part after gw_ (gw_<prefix>_…).")

    def handle(self, *args, prefix: str, **options):
        prefix = prefix.removeprefix("gw_").split("_")[0]
        key = ApiKey.objects.filter(prefix=prefix).first() if prefix else None
        if key is None:
            raise CommandError(f"No API key has the prefix {prefix!r}.")
        if not api_key_end_grace(key=key, actor=None):
            raise CommandError(f"{key.masked} has no old secret still accepted.")
        self.stdout.write(f"The old secret of {key.masked} (gw_{key.previous_prefix}_…) is no longer accepted; "
                          f"it was {key.previous_secret_use}.")

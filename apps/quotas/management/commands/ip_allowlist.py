"""Restrict a channel to a list of source networks: its platform's published ranges, or given CIDRs."""
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from apps.connectors.models import Channel
from apps.quotas.published import NoPublishedRanges, published_ranges
from apps.quotas.services import ip_allowlist_replace


class Command(BaseCommand):
    help = ("Replace a channel's allow rules from one source: --published fetches the platform's "
            "ranges (WeCom: getcallbackip), --cidr gives them. Manual rules are kept.")

    def add_arguments(self, parser):
        parser.add_argument("channel", help="the channel's slug")
        parser.add_argument("--published", action="store_true", help="fetch the platform's published ranges")
        parser.add_argument("--cidr", action="append", default=[], help="a network to allow (repeatable)")
        parser.add_argument("--source", default="", help="label of these rules (default: the kind, or 'cli')")

    def handle(self, *args, channel, published, cidr, source, **options):
        row = Channel.objects.filter(slug=channel).first()
        if row is None:
            raise CommandError(f"No channel {channel!r}.")
        if published == bool(cidr):
            raise CommandError("Give either --published or at least one --cidr.")
        try:
            cidrs = published_ranges(row) if published else cidr
        except NoPublishedRanges as exc:
            raise CommandError(str(exc)) from exc
        source = source or (f"{row.kind}-published" if published else "cli")
        try:
            rules = ip_allowlist_replace(channel=row, cidrs=cidrs, source=source)
        except ValidationError as exc:
            raise CommandError("; ".join(exc.messages)) from exc
        self.stdout.write(f"{row.slug}: {len(rules)} allow rule(s) from {source}: "
                          + ", ".join(r.cidr for r in rules))

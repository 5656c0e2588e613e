"""Delete web chat visitors who never said anything (``manage.py webchat_prune_visitors``)."""
from __future__ import annotations

from datetime import timedelta

from django.core.management.base import BaseCommand
from django.utils import timezone

from apps.connectors.visitors import visitors_prune


class Command(BaseCommand):
    help = ("Delete anonymous web chat visitors older than --older-than-days that never sent a message "
            "(made per connection before visitors were made at their first message).")

    def add_arguments(self, parser):
        parser.add_argument("--older-than-days", type=int, default=1)

    def handle(self, *args, older_than_days: int, **options):
        deleted = visitors_prune(joined_before=timezone.now() - timedelta(days=older_than_days))
        self.stdout.write(f"Deleted {deleted} silent visitor(s).")

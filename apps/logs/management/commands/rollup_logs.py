"""Rebuild the dashboards' daily rollups now (the beat task does the last few days on its own)."""
from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from apps.logs.request_log import request_log_flush
from apps.logs.rollups import recent_days, rollup_days


class Command(BaseCommand):
    help = "Rebuild the daily rollups of the last N days (progress on stderr)."

    def add_arguments(self, parser):
        parser.add_argument("--days", type=int, default=None,
                            help="How many days back from today (default GATEWAY_LOG_ROLLUP_DAYS).")

    def handle(self, *args, days=None, **options):
        if days is not None and not 1 <= days <= 3660:
            raise CommandError("--days must be between 1 and 3660.")
        request_log_flush()
        chosen = sorted(recent_days(days))

        def progress(done, total, day):
            self.stderr.write(f"[{done}/{total}] rolled up {day.isoformat()}")

        rollup_days(chosen, progress=progress)
        self.stdout.write(f"Rebuilt the rollups of {len(chosen)} day(s).")

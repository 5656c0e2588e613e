"""Delete raw log rows past their retention now (the beat task does it daily)."""
from __future__ import annotations

from django.core.management.base import BaseCommand

from apps.logs.rollups import purge_old_logs


class Command(BaseCommand):
    help = "Delete LLM-call, request and audit rows past their retention (progress on stderr)."

    def handle(self, *args, **options):
        def progress(table, deleted):
            self.stderr.write(f"{table}: {deleted} row(s) deleted so far")

        deleted = purge_old_logs(progress=progress)
        self.stdout.write(", ".join(f"{name}: {count}" for name, count in deleted.items()) + " deleted.")

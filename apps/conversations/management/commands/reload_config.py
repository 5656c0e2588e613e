"""``manage.py reload_config``: every process drops the configuration it keeps and reads it again.

Changes saved through the admin, the commands or the services apply by themselves. This is for
changes made behind Django's back: SQL in psql, ``QuerySet.update()`` in a shell, a restored backup.
"""
from django.core.management.base import BaseCommand

from gateway_project.config_cache import reload_everywhere


class Command(BaseCommand):
    help = "Make every gateway process reload channels, agents, API keys, users, roles and limits."

    def handle(self, *args, **options):
        reload_everywhere()
        self.stdout.write("Configuration reloaded here; other processes follow within GATEWAY_CONFIG_CHECK_SECONDS.")

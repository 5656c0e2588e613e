"""``manage.py fake_platforms``: local Slack / WeCom / CRM-callback stand-ins until killed.

Prints ``fake_platforms listening on http://HOST:PORT`` once bound; point SLACK_API_BASE_URL at
``<that>/slack/api`` and WECOM_API_BASE_URL at ``<that>/wecom/cgi-bin``.
"""
from django.core.management.base import BaseCommand, CommandError

from devtools import fake_platforms


class Command(BaseCommand):
    help = "Run local servers speaking Slack's Web API, WeCom's API and a CRM callback receiver."
    requires_system_checks: list[str] = []
    requires_migrations_checks = False

    def add_arguments(self, parser):
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8002, help="0 picks a free port")

    def handle(self, *args, **options):
        def ready(root: str) -> None:
            self.stdout.write(f"fake_platforms listening on {root}")
            self.stdout.write(f"  SLACK_API_BASE_URL={root}/slack/api  WECOM_API_BASE_URL={root}/wecom/cgi-bin")
            self.stdout.flush()

        try:
            fake_platforms.run_server(options["host"], options["port"], on_ready=ready)
        except OSError as exc:
            raise CommandError(str(exc)) from exc

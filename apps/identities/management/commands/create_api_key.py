from datetime import timedelta

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from apps.agents.models import Agent
from apps.connectors.models import Channel
from apps.identities.services import api_key_create


class Command(BaseCommand):
    help = "Create an API key for a user and print it once (only its hash is stored)."

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument("--name", default="", help="A label for the key.")
        parser.add_argument("--expires-days", type=int, default=None,
                            help="The key stops working after N days (at least 1; default: never).")
        parser.add_argument("--channel", action="append", default=[], metavar="SLUG",
                            help="Only usable on this channel (repeat for several; default: any).")
        parser.add_argument("--agent", action="append", default=[], metavar="SLUG",
                            help="Only usable with this agent (repeat for several; default: any).")

    def handle(self, *args, username: str, name: str, expires_days, channel, agent, **options):
        if expires_days is not None and expires_days < 1:  # 0 would be read as "no expiry"
            raise CommandError("--expires-days must be 1 or more; leave it out for a key that never expires.")
        user = get_user_model().objects.filter(username=username).first()
        if user is None:
            raise CommandError(f"No user named {username!r}.")
        channels = list(Channel.objects.filter(slug__in=channel))
        agents = list(Agent.objects.filter(slug__in=agent))
        if missing := set(channel) - {c.slug for c in channels} | set(agent) - {a.slug for a in agents}:
            raise CommandError(f"Unknown channel or agent: {', '.join(sorted(missing))}.")
        expires_at = timezone.now() + timedelta(days=expires_days) if expires_days is not None else None
        key, raw_key = api_key_create(user=user, actor=None, name=name, expires_at=expires_at,
                                      channels=channels, agents=agents)
        self.stderr.write(f"API key {key.masked} for {username}; store it now, it is not shown again:")
        self.stdout.write(raw_key)

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from apps.identities.models import ApiKey


class Command(BaseCommand):
    help = "Create an API key for a user and print it once (only its hash is stored)."

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument("--name", default="", help="A label for the key.")

    def handle(self, *args, username: str, name: str, **options):
        user = get_user_model().objects.filter(username=username).first()
        if user is None:
            raise CommandError(f"No user named {username!r}.")
        key, raw_key = ApiKey.generate(user=user, name=name)
        self.stderr.write(f"API key gw_{key.prefix}_… for {username}; store it now, it is not shown again:")
        self.stdout.write(raw_key)

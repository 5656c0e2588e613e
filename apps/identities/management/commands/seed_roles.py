from django.core.management.base import BaseCommand

from apps.identities.roles import ROLE_ORDER, ensure_role_groups, grant_role_permissions


class Command(BaseCommand):
    help = "Create the customer / employee / admin groups and give them their permissions (idempotent)."

    def handle(self, *args, **options):
        added = grant_role_permissions(ensure_role_groups())
        for role in ROLE_ORDER:
            self.stdout.write(f"{role}: {added[role]} permission(s) added")

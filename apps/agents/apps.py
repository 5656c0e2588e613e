from django.apps import AppConfig
from django.db.models.signals import post_migrate


class AgentsConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "apps.agents"

    def ready(self) -> None:
        post_migrate.connect(_sync_tools, sender=self)


def _sync_tools(sender, using="default", **kwargs) -> None:
    from .services import tool_sync

    tool_sync()
